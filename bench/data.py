"""Data benchmark: ShapesWorld generation time and reader throughput (samples/s) from raw
images and from a feature store. Prints one JSON object on stdout.

    .venv/bin/python bench/data.py [--train-images 2000 --val-images 500 --test-images 500]
                                    [--samples 2000] [--keep DIR]

Figures, measured in one run so that the ratios are comparable on a shared machine:

* ``generation_s``, ``generation_images``: ShapesWorld at the given size (all five datasets,
  every split: 14,500 images at the default size);
* ``raw_*``: the VQA v2 train reader at ``model.image_size`` 224 (decode JPEG, transform),
  single process and through a DataLoader with 2 workers;
* ``features_*``: the same reader in features mode on a store of 100 x 2048 float16 region
  features per image (the shape of Pythia's bottom-up features); ``store_write_s`` is the time
  to write that store with ``FeatureStoreWriter``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import load_config
from training.data import build_dataset, build_processors, collate
from training.data.feature_store import FeatureStoreWriter
from training.data.shapes import generate


def _rate(dataset, n: int) -> float:
    n = min(n, len(dataset))
    start = time.perf_counter()
    for i in range(n):
        dataset[i]
    return n / (time.perf_counter() - start)


def _loader_rate(dataset, n: int, workers: int, batch_size: int = 64) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate,
                        shuffle=False, persistent_workers=False)
    seen = 0
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    for batch in it:
        seen += len(batch["question_id"])
        if seen >= n:
            break
    return seen / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train-images", type=int, default=2000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--test-images", type=int, default=500)
    p.add_argument("--samples", type=int, default=2000, help="samples per throughput figure")
    p.add_argument("--keep", type=Path, default=None, help="write the world here and keep it")
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="pythia-bench-"))
    root = args.keep or tmp / "shapes"
    out: dict[str, object] = {"cpus": os.cpu_count()}
    try:
        t0 = time.perf_counter()
        summary = generate(root, seed=0, train_images=args.train_images,
                           val_images=args.val_images, test_images=args.test_images)
        out["generation_s"] = round(time.perf_counter() - t0, 2)
        out["generation_images"] = summary["images"]  # all five datasets, all splits

        cfg = load_config(None, [f"datasets.vqa2.data_dir={root / 'vqa2'}",
                                 "model.image_size=224"])
        procs = build_processors(cfg, "vqa2")
        raw = build_dataset(cfg, "vqa2", "train", procs)
        out["raw_samples_per_s"] = round(_rate(raw, args.samples), 1)
        out["raw_loader_2workers_samples_per_s"] = round(_loader_rate(raw, args.samples, 2), 1)

        store = tmp / "features"
        rng = np.random.default_rng(0)
        block = rng.standard_normal((100, 2048)).astype(np.float16)
        boxes = np.tile(np.array([0, 0, 64, 64], np.float32), (100, 1))
        t0 = time.perf_counter()
        with FeatureStoreWriter(store, map_size=1 << 31) as w:
            for path in sorted((root / "vqa2" / "train2014").glob("*.jpg")):
                w.put(path.stem, {"features": block, "boxes": boxes},
                      {"kind": "region", "image_w": 128, "image_h": 128})
        out["store_write_s"] = round(time.perf_counter() - t0, 2)
        fcfg = load_config(None, [f"datasets.vqa2.data_dir={root / 'vqa2'}",
                                  f"datasets.vqa2.features={store}"])
        feats = build_dataset(fcfg, "vqa2", "train", procs)
        _rate(feats, 200)  # warm the page cache: the figure is the reader, not the disk
        out["features_samples_per_s"] = round(_rate(feats, args.samples), 1)
        out["features_loader_2workers_samples_per_s"] = round(
            _loader_rate(feats, args.samples, 2), 1)
        out["features_vs_raw"] = round(
            float(out["features_samples_per_s"]) / float(out["raw_samples_per_s"]), 1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

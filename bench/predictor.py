"""Predictor throughput at several batch sizes. Prints one JSON object.

    .venv/bin/python bench/predictor.py [--device auto|cpu|cuda] [--batches 1 8 32 128]
                                        [--image-size 128] [--repeats 5]

Builds a ShapesWorld-sized Pythia (``models.pythia.SHAPES_RECIPE``, ResNet-18 backbone,
untrained: speed does not depend on the weights), releases it to a temporary directory and
loads it through ``Predictor.from_pretrained`` (bf16 autocast on CUDA), then times
``Predictor.vqa`` on PNG bytes, decoding included. Per batch size: median seconds per call,
images per second, and the ratio to batch 1 (measured in the same run).
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_model, save_pretrained
from models.predictor import Predictor
from models.processors import AnswerSpace, ImageTransform, Vocabulary
from models.pythia import SHAPES_RECIPE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    torch.manual_seed(0)
    vocab = Vocabulary.build(["what color is the large circle", "how many stars are there"])
    space = AnswerSpace([f"answer{i}" for i in range(24)])
    model = create_model("pythia", vocab_size=len(vocab), num_answers=len(space),
                         **SHAPES_RECIPE)
    buf = io.BytesIO()
    Image.new("RGB", (args.image_size, args.image_size), (90, 30, 200)).save(buf, "PNG")
    image = buf.getvalue()
    out: dict[str, object] = {"model": "pythia SHAPES_RECIPE", "image_size": args.image_size}
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, Path(tmp) / "r", processors={
            "vocab": vocab, "answer_space": space,
            "image_transform": ImageTransform(size=args.image_size)})
        p = Predictor.from_pretrained(Path(tmp) / "r", device=args.device)
    out["device"] = str(p.device)
    out["parameters"] = p.model.num_parameters()
    results = {}
    for b in args.batches:
        images, questions = [image] * b, ["what color is the large circle?"] * b
        p.vqa(images, questions)  # warm-up (allocations, cuDNN autotuning)
        times = []
        for _ in range(args.repeats):
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            p.vqa(images, questions)
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        results[str(b)] = {"seconds_per_call": round(median, 5),
                           "images_per_s": round(b / median, 1)}
    base = results[str(args.batches[0])]["images_per_s"]
    for r in results.values():
        r["speedup_vs_first"] = round(r["images_per_s"] / base, 2)
    out["batches"] = results
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

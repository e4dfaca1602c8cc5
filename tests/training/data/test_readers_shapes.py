"""The readers on a generated ShapesWorld (every dataset, every split) and in features
mode on a feature store built from those images."""

import numpy as np
import pytest
import torch
from torch.utils.data import ConcatDataset, DataLoader

from training.config import load_config
from training.data import MultiTaskBatchSampler, build_dataset, build_processors, collate
from training.data.feature_store import FeatureStoreWriter
from training.data.shapes import generate

NAMES = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, seed=0, train_images=12, val_images=6, test_images=6, image_size=64,
             workers=1)
    overrides = [f"datasets.{n}.data_dir={root / n}" for n in NAMES]
    return root, load_config(None, [*overrides, "model.image_size=64"])


@pytest.mark.parametrize("name", NAMES)
def test_every_split_of_the_generated_world_reads(shapes, name):
    _, cfg = shapes
    procs = build_processors(cfg, name)
    splits = ("train", "val") if name == "coco" else ("train", "val", "test")
    for split in splits:
        ds = build_dataset(cfg, name, split, procs)
        assert len(ds) > 0
        batch = collate([ds[i] for i in range(min(4, len(ds)))])
        assert batch["image"].shape[1:] == (3, 64, 64)
        assert torch.isfinite(batch["image"]).all()
        if name in ("vqa2", "textvqa", "vizwiz") and split != "test":
            # every question has a soft-score target in [0, 1] and a non-zero best answer
            # for most questions (the generator's answers come from a closed world)
            t = batch["targets"]
            assert t.min() >= 0 and t.max() <= 1


def test_generated_vqa_targets_reflect_annotator_agreement(shapes):
    _, cfg = shapes
    procs = build_processors(cfg, "vqa2")
    ds = build_dataset(cfg, "vqa2", "train", procs)
    space = procs["answer_space"]
    best = [float(ds[i]["targets"].max()) for i in range(len(ds))]
    assert np.mean([b == pytest.approx(1.0) for b in best]) > 0.5
    # the multiple-choice answer is in the space and scores at least .3
    for i in range(len(ds)):
        mc = ds.records[i]["multiple_choice_answer"]
        assert ds[i]["targets"][space.word2idx(mc)] >= 0.3 - 1e-6


def test_features_mode_reads_the_store_and_refuses_missing_keys(shapes, tmp_path):
    root, cfg = shapes
    procs = build_processors(cfg, "vqa2")
    raw = build_dataset(cfg, "vqa2", "val", procs)
    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    keys = sorted({p.stem for p in (root / "vqa2" / "val2014").glob("*.jpg")})
    with FeatureStoreWriter(store) as w:
        for k in keys:
            n = int(rng.integers(3, 8))
            w.put(k, {"features": rng.standard_normal((n, 16)).astype(np.float16),
                      "boxes": np.tile(np.array([0, 0, 32, 16], np.float32), (n, 1))},
                  {"image_w": 64, "image_h": 32, "kind": "region"})
    fcfg = load_config(None, [f"datasets.vqa2.data_dir={root / 'vqa2'}",
                              f"datasets.vqa2.features={store}", "datasets.vqa2.max_features=5"])
    ds = build_dataset(fcfg, "vqa2", "val", procs)
    s = ds[0]
    assert "image" not in s
    assert s["image_features"].dtype == torch.float16 and s["image_features"].shape[1] == 16
    assert s["image_features"].shape[0] <= 5
    assert s["image_boxes"][0].tolist() == pytest.approx([0, 0, 0.5, 0.5])  # relative
    assert s["question_id"] == raw[0]["question_id"]
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2)
    batch = next(iter(loader))
    assert batch["image_features"].shape[0] == 4
    assert batch["image_feature_mask"].sum(1).tolist() == [
        min(5, ds[i]["image_features"].shape[0]) for i in range(4)]
    # a store lacking an image's features is refused at construction, naming the image
    partial = tmp_path / "partial"
    with FeatureStoreWriter(partial) as w:
        w.put(keys[0], {"features": np.zeros((2, 16), np.float16)})
    pcfg = load_config(None, [f"datasets.vqa2.data_dir={root / 'vqa2'}",
                              f"datasets.vqa2.features={partial}"])
    with pytest.raises(ValueError, match=r"no features for image COCO_val2014_"):
        build_dataset(pcfg, "vqa2", "val", procs)


def test_multitask_loader_over_generated_datasets(shapes):
    _, cfg = shapes
    datasets = []
    for name in ("vqa2", "vizwiz"):
        datasets.append(build_dataset(cfg, name, "train", build_processors(cfg, name)))
    sampler = MultiTaskBatchSampler([len(d) for d in datasets], batch_size=4, seed=0)
    seen = set()
    for batch in DataLoader(ConcatDataset(datasets), batch_sampler=sampler, collate_fn=collate):
        assert isinstance(batch["dataset"], str)
        seen.add(batch["dataset"])
    assert seen == {"vqa2", "vizwiz"}

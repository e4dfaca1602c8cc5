"""The shipped configs: every file loads against the schema, and each published recipe trains
(two updates, shrunk widths) on ShapesWorld through a feature store, as it would on the real
data with region features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training import features
from training.config import load_config
from training.data import shapes
from training.train import main

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"
SHAPES = sorted((CONFIGS / "shapes").glob("*.yaml"))
PUBLISHED = sorted((CONFIGS / "published").glob("*.yaml"))
DIM = 16  # the fake region features' width

# Small widths per family (the published ones are 1000-5000 wide).
SMALL = {
    "pythia": ["model.embedding_dim=16", "model.hidden_dim=32", "model.attention_dim=32",
               "model.fusion_dim=32", "model.classifier_dim=32",
               "model.classifier_text_dim=16"],
    "butd": ["model.embedding_dim=16", "model.hidden_dim=32", "model.attention_dim=32"],
    "visdial": ["model.embedding_dim=16", "model.hidden_dim=32", "model.attention_dim=32"],
}
SMALL["lorra"] = [*SMALL["pythia"], "model.ocr_embedding_dim=16", "model.ocr_dim=16"]


def test_shipped_configs_exist() -> None:
    assert {p.stem for p in SHAPES} == {"pythia", "pythia_pretrained", "lorra", "ban", "butd",
                                        "butd_scst", "visdial", "multitask",
                                        "multitask_pretrained"}
    assert {p.stem for p in PUBLISHED} == {"pythia_vqa2", "lorra_textvqa", "pythia_vizwiz",
                                           "butd_coco", "visdial"}


@pytest.mark.parametrize("path", SHAPES + PUBLISHED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_loads(path: Path) -> None:
    cfg = load_config(path, [])
    assert cfg.model.name is not None and len(cfg.datasets) >= 1
    for name in cfg.datasets:
        assert cfg.datasets[name].data_dir, name
    if path.parent.name == "shapes":  # reads `make data`'s output from the repo root
        for name in cfg.datasets:
            assert str(cfg.datasets[name].data_dir).rstrip("/").endswith(f"shapes/{name}")
    else:
        assert cfg.trainer.batch_size >= 32 and cfg.trainer.max_updates >= 20000


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """dataset -> (data_dir, feature store) with random 5-region features for every image."""
    root = tmp_path_factory.mktemp("published")
    shapes.generate(root / "data", seed=1, train_images=8, val_images=4, test_images=2,
                    image_size=64, workers=1)
    rng = np.random.default_rng(0)
    out: dict[str, tuple[Path, Path]] = {}
    for name in ("vqa2", "textvqa", "vizwiz", "coco", "visdial"):
        npy = root / "npy" / name
        npy.mkdir(parents=True)
        for image in (root / "data" / name).rglob("*.jpg"):
            np.save(npy / f"{image.stem}.npy", rng.standard_normal((5, DIM)).astype("float32"))
        store = root / "stores" / name
        assert features.main(["import-npy", "--dir", str(npy), "--out", str(store)]) == 0
        out[name] = (root / "data" / name, store)
    return out


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.stem)
def test_published_recipe_trains_on_features(path: Path, stores: dict[str, tuple[Path, Path]],
                                             tmp_path: Path) -> None:
    cfg = load_config(path, [])
    family = str(cfg.model.name)
    (name,) = list(cfg.datasets)
    data_dir, store = stores[name]
    run = tmp_path / "run"
    args = ["--config", str(path), f"datasets.{name}.data_dir={data_dir}",
            f"datasets.{name}.features={store}", f"run.save_dir={run}", "trainer.device=cpu",
            "trainer.max_updates=2", "trainer.batch_size=4", "trainer.eval_every=2",
            "trainer.checkpoint_every=2", "data.num_workers=0", f"model.image_dim={DIM}",
            *SMALL[family]]
    if "glove_path" in cfg.model:
        args.append("model.glove_path=null")
    assert main(args) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if r["event"] == "eval"]
    metric = str(cfg.trainer.early_stop.metric)
    assert evals and metric in evals[-1], (metric, sorted(evals[-1]) if evals else None)
    assert (run / "release" / "model.safetensors").is_file()

"""Multi-task training through training/train.py: the multitask family on all five tiny
ShapesWorld datasets (CPU, seconds), with one shared vocabulary and per-task losses/metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from models.predictor import Predictor
from tests.training.runs import records as _records
from tests.training.runs import tiny_world
from training.config import load_config
from training.data import build_multitask_processors, processors_for
from training.train import main

DATASETS = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")
TINY_MODEL = [
    "model.name=multitask", "model.image_size=64", "model.backbone=resnet18",
    "model.freeze_backbone=true", "model.hidden_dim=32", "model.embedding_dim=16",
    "model.attention_dim=32", "model.fusion_dim=32", "model.classifier_dim=32",
    "model.classifier_text_dim=16", "model.image_dim=32", "model.ocr_embedding_dim=16",
    "model.ocr_dim=16", "model.caption_hidden_dim=32", "model.caption_attention_dim=32",
    "model.dialog_attention_dim=32", "model.dropout=0.0",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_world(tmp_path_factory, "shapes_all")


def _args(data_root: Path, save_dir: Path, *extra: str,
          datasets: tuple[str, ...] = DATASETS) -> list[str]:
    return [*TINY_MODEL, *(f"datasets.{d}.data_dir={data_root / d}" for d in datasets),
            f"run.save_dir={save_dir}", "trainer.device=cpu", "data.num_workers=0",
            "trainer.batch_size=8", "trainer.log_every=1", "trainer.eval_every=100",
            "trainer.checkpoint_every=100", "scheduler.type=constant",
            "scheduler.warmup_updates=0", "optimizer.lr=0.005", *extra]


def test_multitask_processors_share_one_vocabulary(data_root: Path) -> None:
    cfg = load_config(None, ["model.name=multitask",
                             *(f"datasets.{d}.data_dir={data_root / d}" for d in DATASETS)])
    procs = build_multitask_processors(cfg, list(DATASETS))
    assert {"vocab", "caption_vocab", "ocr", "answer_space_vqa2", "answer_space_textvqa",
            "answer_space_vizwiz"} <= set(procs)
    assert "answer_space" not in procs
    vocab = procs["vocab"]
    # Words of every dataset's own vocabulary are in the shared one (VisDial's answers too).
    for name in ("vqa2", "textvqa", "visdial"):
        from training.data import build_processors

        own = build_processors(cfg, name)["vocab"]
        assert set(own.words) <= set(vocab.words), name
    assert len(set(vocab.words)) == len(vocab.words)
    view = processors_for(procs, "vizwiz")
    assert view["answer_space"] is procs["answer_space_vizwiz"] and view["vocab"] is vocab


def test_multitask_run_all_five(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(_args(data_root, run, "trainer.max_updates=40", "trainer.eval_every=40",
                      "data.sampling=round_robin")) == 0
    train = _records(run, "train")
    # round_robin: the five datasets take turns, so each logs its own loss every 5 updates.
    for d in DATASETS:
        per_task = [r[f"loss/{d}"] for r in train if f"loss/{d}" in r]
        assert len(per_task) == 8, d
        assert sum(per_task[-3:]) < sum(per_task[:3]), (d, per_task)
    metrics = _records(run, "eval")[-1]
    for key in ("vqa2/accuracy", "textvqa/accuracy", "vizwiz/accuracy", "coco/cider",
                "visdial/mrr", "visdial/ndcg", "coco/loss", "visdial/loss"):
        assert key in metrics, key
    predictor = Predictor.from_pretrained(run / "release", device="cpu")
    image = str(next((data_root / "vqa2" / "val2014").glob("*.jpg")))
    answers = predictor.vqa([image], ["what color is the circle?"], dataset="vqa2", top_k=3)
    space = set(predictor.processors["answer_space_vqa2"].answers)
    assert len(answers[0]) == 3 and {a["answer"] for a in answers[0]} <= space
    captions = predictor.caption([image])
    assert isinstance(captions[0]["caption"], str)


def test_sampling_weights_and_per_dataset_heads(data_root: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(_args(data_root, run, "trainer.max_updates=30", "trainer.eval_every=30",
                      "data.sampling=temperature", "datasets.vqa2.sampling_weight=20",
                      "model.vqa_heads=per_dataset")) == 0
    train = _records(run, "train")
    counts = {d: sum(f"loss/{d}" in r for r in train) for d in DATASETS}
    # p(vqa2) = 20 * sqrt(size) / (20 * sqrt(size) + four others): most batches, not all
    assert counts["vqa2"] >= 20 and counts["vqa2"] < 30, counts
    predictor = Predictor.from_pretrained(run / "release", device="cpu")
    assert predictor.model.vqa_heads == "per_dataset"
    image = str(next((data_root / "vizwiz" / "val").glob("*.jpg")))
    answers = predictor.vqa([image], ["what color is it?"], dataset="vizwiz", top_k=2)
    assert {a["answer"] for a in answers[0]} <= set(
        predictor.processors["answer_space_vizwiz"].answers)
    # a weight the strategy cannot use is refused, naming the key
    assert main(_args(data_root, tmp_path / "bad", "trainer.max_updates=2",
                      "datasets.coco.sampling_weight=2")) == 1
    err = capsys.readouterr().err
    assert "sampling_weight" in err and "temperature" in err


def test_single_task_family_refuses_two_datasets(data_root: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pythia_keys = ("model.ocr", "model.caption", "model.dialog")
    args = ["model.name=pythia", *(a for a in _args(data_root, tmp_path / "run",
                                                     datasets=("vqa2", "vizwiz"))[1:]
                                   if not a.startswith(pythia_keys))]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "model.name='pythia' trains on one dataset" in err and "multitask" in err


def test_multitask_ddp_two_ranks(data_root: Path, tmp_path: Path) -> None:
    # Routes leave parameters unused per batch: DDP must run with find_unused_parameters
    # (forced for multi-dataset families) and match one process on the same global batches
    # (rank r takes rows r::2 of the batch one process takes whole).
    repo = Path(__file__).resolve().parents[2]
    two_sets = ("vqa2", "coco")
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["trainer.max_updates=4", "data.sampling=round_robin"]
    assert main(_args(data_root, one, *common, datasets=two_sets)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(repo / "training" / "train.py"),
         *_args(data_root, two, *common, datasets=two_sets)],
        cwd=repo, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _records(one, "train"), _records(two, "train")
    assert len(b) == 4 and [("loss/vqa2" in r) for r in b] == [True, False, True, False]
    # VQA losses are means over samples: exact up to float order. Caption losses are means
    # over each rank's tokens, averaged over ranks, which weighs tokens slightly differently
    # from one process's mean over all tokens when the ranks' captions differ in length.
    assert [r["loss"] for r in b[::2]] == pytest.approx([r["loss"] for r in a[::2]], rel=1e-3)
    assert [r["loss"] for r in b[1::2]] == pytest.approx([r["loss"] for r in a[1::2]], rel=2e-2)


def test_pythia_without_copy_trains_on_textvqa(data_root: Path, tmp_path: Path) -> None:
    # TextVQA targets carry OCR-copy slots; a model without copy learns the answer-space part
    # (the benchmark's contrast to LoRRA).
    args = ["model.name=pythia", *(a for a in TINY_MODEL[1:] if not a.startswith(
        ("model.ocr", "model.caption", "model.dialog"))),
        f"datasets.textvqa.data_dir={data_root / 'textvqa'}", f"run.save_dir={tmp_path}",
        "trainer.device=cpu", "data.num_workers=0", "trainer.batch_size=8",
        "trainer.max_updates=4", "trainer.eval_every=4", "trainer.log_every=1",
        "scheduler.type=constant", "scheduler.warmup_updates=0"]
    assert main(args) == 0
    assert "textvqa/accuracy" in _records(tmp_path, "eval")[-1]

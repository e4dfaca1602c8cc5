"""End-to-end tests of training/train.py on a tiny ShapesWorld VQA (CPU, seconds each)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from models.predictor import Predictor
from tests.training.runs import records as _records
from tests.training.runs import tiny_world
from training import trainer as trainer_mod
from training.train import SIGTERM_EXIT, main

TINY_MODEL = [
    "model.name=pythia", "model.image_size=64", "model.backbone=resnet18",
    "model.freeze_backbone=true", "model.hidden_dim=32", "model.embedding_dim=16",
    "model.attention_dim=32", "model.fusion_dim=32", "model.classifier_dim=32",
    "model.classifier_text_dim=16", "model.image_dim=32", "model.dropout=0.1",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_world(tmp_path_factory, "shapes", "vqa2")


def _args(data_root: Path, save_dir: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, f"datasets.vqa2.data_dir={data_root / 'vqa2'}",
            f"run.save_dir={save_dir}", "trainer.device=cpu", "data.num_workers=0",
            "trainer.batch_size=16", "trainer.log_every=1", "trainer.eval_every=100",
            "trainer.checkpoint_every=100", "scheduler.type=constant",
            "scheduler.warmup_updates=0", *extra]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu",
                                                weights_only=True)["model"]
    return state


def test_train_end_to_end(data_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(_args(data_root, run, "trainer.max_updates=12", "trainer.eval_every=6")) == 0
    losses = [r["loss"] for r in _records(run, "train")]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert "loss/vqa2" in _records(run, "train")[0]
    evals = _records(run, "eval")
    assert [r["update"] for r in evals] == [6, 12] and "vqa2/accuracy" in evals[-1]
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "current.pt").is_file()
    assert any((run / "tensorboard").iterdir())
    predictor = Predictor.from_pretrained(run / "release", device="cpu")
    assert predictor.transform.size == 64
    image = next((data_root / "vqa2" / "val2014").glob("*.jpg"))
    answers = predictor.vqa([str(image)], ["what color is the circle?"], top_k=2)
    assert len(answers[0]) == 2 and all(isinstance(a["answer"], str) for a in answers[0])


def test_exact_resume(data_root: Path, tmp_path: Path) -> None:
    # 5 batches of 16 per epoch: 8 updates cross an epoch; dropout makes the RNG matter.
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_args(data_root, full, "trainer.max_updates=8")) == 0
    assert main(_args(data_root, part, "trainer.max_updates=4")) == 0
    assert main(_args(data_root, part, "trainer.max_updates=8", "run.resume=true")) == 0
    a, b = _weights(full / "checkpoints" / "current.pt"), _weights(part / "checkpoints" /
                                                                   "current.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=k)
    la = [r["loss"] for r in _records(full, "train")]
    lb = [r["loss"] for r in _records(part, "train")]
    assert lb == pytest.approx(la, rel=1e-6)


def test_early_stopping_restores_best(data_root: Path, tmp_path: Path) -> None:
    # The validation loss falls as training goes on: with mode=max it only "gets worse",
    # so the first evaluation stays the best and patience 1 stops at the second.
    run = tmp_path / "run"
    assert main(_args(data_root, run, "trainer.max_updates=30", "trainer.eval_every=3",
                      "trainer.early_stop.metric=vqa2/loss", "trainer.early_stop.mode=max",
                      "trainer.early_stop.patience=1")) == 0
    stopped = _records(run, "stopped")
    assert stopped and stopped[0]["reason"] == "early_stop" and stopped[0]["update"] == 6
    best = _weights(run / "checkpoints" / "best.pt")
    last = _weights(run / "checkpoints" / "current.pt")
    from safetensors.torch import load_file

    released = load_file(str(run / "release" / "model.safetensors"))
    name = next(k for k, v in best.items() if v.is_floating_point() and k in released
                and not torch.equal(v, last[k]))
    torch.testing.assert_close(released[name], best[name])


def test_sigterm_saves_checkpoint(data_root: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    step = trainer_mod.Trainer._step

    def step_then_signal(self: trainer_mod.Trainer, batches: Any) -> dict[str, Any]:
        out = step(self, batches)
        if self.update == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler only sets a flag
        return out

    monkeypatch.setattr(trainer_mod.Trainer, "_step", step_then_signal)
    run = tmp_path / "run"
    assert main(_args(data_root, run, "trainer.max_updates=10")) == SIGTERM_EXIT
    state = torch.load(run / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    assert state["update"] == 3 and state["sampler"] == {"epoch": 0, "position": 3}


def test_bad_config_key(data_root: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(data_root, tmp_path / "run", "trainer.max_update=3")) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "trainer.max_update" in err


def test_bad_batch_arithmetic(data_root: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(data_root, tmp_path / "run", "trainer.accumulate=3")) == 1
    assert "trainer.batch_size=16" in capsys.readouterr().err


def test_missing_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(tmp_path / "nowhere", tmp_path / "run")) == 1
    assert "dataset 'vqa2'" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(data_root: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_args(data_root, tmp_path / "run", "trainer.device=cuda")) == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_ddp_two_gloo_ranks_match_one_process(data_root: Path, tmp_path: Path) -> None:
    # Same global batch: one process with 16 samples vs two ranks accumulating two
    # micro-batches of 4 (rank r takes rows r::2 of the same permutation, the first micro-batch
    # under no_sync), so the updates see the same 16 samples and match up to float order.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    common = ["trainer.max_updates=6", "model.dropout=0.0"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_args(data_root, one, *common)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(repo / "training" / "train.py"),
         *_args(data_root, two, *common, "trainer.accumulate=2")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    la = [r["loss"] for r in _records(one, "train")]
    lb = [r["loss"] for r in _records(two, "train")]
    assert len(lb) == 6 and lb == pytest.approx(la, rel=1e-3)


def test_checkpoint_holds_the_same_updates_evaluation(data_root: Path, tmp_path: Path) -> None:
    # Evaluation and checkpoint fall on the same updates: the checkpoint must carry that
    # evaluation's early-stopping state, or a resume from it would forget the evaluation.
    run = tmp_path / "run"
    assert main(_args(data_root, run, "trainer.max_updates=6", "trainer.eval_every=3",
                      "trainer.checkpoint_every=3", "trainer.early_stop.metric=vqa2/loss",
                      "trainer.early_stop.mode=min")) == 0
    losses = [r["vqa2/loss"] for r in _records(run, "eval")]
    assert len(losses) == 2
    state = torch.load(run / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    best = min(range(2), key=lambda i: losses[i])
    assert state["early_stop"]["best"] == pytest.approx(losses[best])
    assert state["early_stop"]["best_update"] == 3 * (best + 1)
    assert state["early_stop"]["bad_evals"] == (1 if best == 0 else 0)


def test_failed_start_releases_the_process_group(tmp_path: Path) -> None:
    # Two ranks, a data_dir that does not exist: both exit 1 with the error, neither hangs.
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(repo / "training" / "train.py"), *_args(tmp_path / "nowhere", tmp_path / "run")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("error: dataset 'vqa2'") == 2, proc.stderr[-3000:]

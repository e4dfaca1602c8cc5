"""A rank killed in a 2-process (gloo) run: torchrun fails fast naming it, and resuming from
the last checkpoint ends with the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.training.test_train import _args, data_root  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]


def _torchrun(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "training" / "train.py"), *args],
        cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _updates(run: Path) -> int:
    log = run / "metrics.jsonl"
    if not log.is_file():
        return 0
    rows = [json.loads(x) for x in log.read_text().splitlines() if x.strip()]
    return max((r["update"] for r in rows if r.get("event") == "train"), default=0)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_killed_rank_fails_fast_and_resume_is_exact(data_root: Path,  # noqa: F811
                                                     tmp_path: Path) -> None:
    common = ["trainer.max_updates=10", "trainer.checkpoint_every=4", "model.dropout=0.1"]
    full, part = tmp_path / "full", tmp_path / "part"
    ref = _torchrun(_args(data_root, full, *common))
    assert ref.wait(300) == 0, ref.stderr.read() if ref.stderr else ""

    proc = _torchrun(_args(data_root, part, *common))
    deadline = time.monotonic() + 120
    while _updates(part) < 5 and time.monotonic() < deadline:  # past the checkpoint at 4
        assert proc.poll() is None, "the run ended before the kill"
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    killed_at = time.monotonic()
    os.kill(workers[-1], signal.SIGKILL)
    code = proc.wait(120)
    failed_after = time.monotonic() - killed_at
    stderr = proc.stderr.read() if proc.stderr else ""
    assert code != 0 and failed_after < 60, (code, failed_after)
    assert "SIGKILL" in stderr or "Signal 9" in stderr, stderr[-2000:]
    state = torch.load(part / "checkpoints" / "current.pt", map_location="cpu",
                       weights_only=True)
    assert 4 <= state["update"] < 10

    resumed = _torchrun(_args(data_root, part, *common, "run.resume=true"))
    assert resumed.wait(300) == 0, resumed.stderr.read() if resumed.stderr else ""
    a = torch.load(full / "checkpoints" / "current.pt", map_location="cpu",
                   weights_only=True)["model"]
    b = torch.load(part / "checkpoints" / "current.pt", map_location="cpu",
                   weights_only=True)["model"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-6, msg=k)

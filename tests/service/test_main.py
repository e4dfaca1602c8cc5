"""``python -m service`` as a user starts it: settings errors, and SIGTERM draining (readiness
off at once, requests in flight finish, exit 0)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.service.conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_start_errors(tmp_path: Path, demo_release: Path) -> None:
    r = _run()
    assert r.returncode == 1 and "no model to serve" in r.stderr
    r = _run("--model", str(tmp_path / "missing"))
    assert r.returncode == 1 and "error: model 'missing'" in r.stderr
    r = _run("--model", str(demo_release), env={"PYTHIA_MAX_BATCH_SIZE": "0"})
    assert r.returncode == 1 and "invalid settings" in r.stderr and "max_batch_size" in r.stderr
    r = _run("--model", f"a={demo_release}", "--model", f"a={demo_release}")
    assert r.returncode == 1 and "given twice" in r.stderr


def test_sigterm_drains(demo_release: Path, image_bytes: bytes) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHIA_MAX_BATCH_SIZE": "1",
           "PYTHIA_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--model", f"demo={demo_release}",
                             "--port", str(port)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
        results: list[int] = []
        lock = threading.Lock()

        def caption() -> None:
            with httpx.Client(timeout=60) as c:
                r = c.post(f"{url}/caption", files={"image": ("a.jpg", image_bytes)},
                           data={"beam_size": "10", "max_length": "50"})
            with lock:
                results.append(r.status_code)

        threads = [threading.Thread(target=caption) for _ in range(24)]
        for t in threads:
            t.start()
        time.sleep(0.5)  # requests are queued behind one another (batch size 1)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        assert "draining" in ready.json()["error"]["message"]
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
        assert results == [200] * 24  # every request in flight finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

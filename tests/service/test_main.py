"""``python -m service`` as a user starts it: settings errors, and SIGTERM draining (readiness
off at once, requests in flight finish, exit 0)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHIA_DEVICE": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "service", "--model", f"demo={demo_release}",
                             "--port", str(port)], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    n = 8
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
        body = json.dumps({"image": base64.b64encode(image_bytes).decode(),
                           "question": "what color is the circle?"}).encode()
        results: list[int] = []
        lock = threading.Lock()

        def trickle() -> Iterator[bytes]:  # a slow client: the upload takes ~2 s
            step = len(body) // 20 + 1
            for i in range(0, len(body), step):
                time.sleep(0.1)
                yield body[i:i + step]

        def ask() -> None:
            with httpx.Client(timeout=60) as c:
                r = c.post(f"{url}/vqa", content=trickle(),
                           headers={"content-type": "application/json"})
            with lock:
                results.append(r.status_code)

        threads = [threading.Thread(target=ask) for _ in range(n)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        in_flight = 0.0
        while time.monotonic() < deadline and in_flight < n + 1:  # + this /metrics call
            text = httpx.get(f"{url}/metrics").text
            in_flight = next(float(x.split()[-1]) for x in text.splitlines()
                             if x.startswith("pythia_requests_in_flight "))
        assert in_flight >= n + 1, "the uploads did not all start"
        proc.send_signal(signal.SIGTERM)  # while every upload is still going
        time.sleep(0.1)
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "not_ready"
        assert "draining" in ready.json()["error"]["message"]
        late = httpx.post(f"{url}/vqa", content=body,
                          headers={"content-type": "application/json"})
        assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
        assert results == [200] * n  # every request in flight at the signal finished
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_releases_do_not_take_the_service_down(demo_release: Path, image_bytes: bytes,
                                                   tmp_path: Path) -> None:
    import shutil

    truncated = tmp_path / "truncated"
    shutil.copytree(demo_release, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    wrong_family = tmp_path / "wrong_family"
    shutil.copytree(demo_release, wrong_family)
    config = json.loads((wrong_family / "config.json").read_text())
    config["family"] = "pythia"  # multi-task hyper-parameters under another family
    (wrong_family / "config.json").write_text(json.dumps(config))
    other_space = tmp_path / "other_space"
    shutil.copytree(demo_release, other_space)
    space = other_space / "processor" / "answer_space_vqa2.json"
    data = json.loads(space.read_text())
    data["answers"] = data["answers"][:-3]  # a checkpoint for another answer space
    space.write_text(json.dumps(data))

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHIA_DEVICE": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "--model", f"demo={demo_release}",
         "--model", f"truncated={truncated}", "--model", f"wrong={wrong_family}",
         "--model", f"space={other_space}", "--port", str(port)],
        cwd=REPO, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        url = f"http://127.0.0.1:{port}"
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200, ready.text
        body = ready.json()
        assert body["status"] == "degraded" and body["models"] == ["demo"]
        assert set(body["failed"]) == {"truncated", "wrong", "space"}
        assert "model.safetensors" in body["failed"]["truncated"]
        files = {"image": ("a.jpg", image_bytes)}
        r = httpx.post(f"{url}/vqa", files=files, data={"question": "what?", "model": "wrong"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
        r = httpx.post(f"{url}/vqa", files=files, data={"question": "what?"})
        assert r.status_code == 200 and r.json()["model"] == "demo"
        listed = httpx.get(f"{url}/models").json()
        assert [f["name"] for f in listed["failed"]] == ["space", "truncated", "wrong"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

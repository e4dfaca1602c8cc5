"""The Compose topology without Docker: Redis, the API and a worker started as processes with
exactly the commands, environment and health checks docker-compose.yml gives them (read from
the file, interpolated with its defaults), against a private redis-server, then /vqa answered
through the worker and a batch job run end to end (POST /jobs on the tiny ShapesWorld val,
wait for done, fetch the EvalAI file), and a clean drain on SIGTERM within the compose
stop_grace_period.

Substitutions, container -> this machine (nothing else is changed):

* ``redis:6379`` (the service's DNS name and port) -> ``127.0.0.1:<free port>``; the Redis
  command gets ``--port/--bind/--dir`` appended and its health check's ``redis-cli`` a ``-p``;
* ``/opt/pythia/demo/release`` (the release baked into the image) -> the ``demo_release``
  fixture (a tiny multi-task model trained by our trainer);
* ``/data`` (the ``data`` volume, seeded with ShapesWorld under ``shapes/``) -> a temporary
  directory holding the ``shapes_root`` fixture's ``vqa2`` under ``shapes/vqa2``;
* the API's ``PYTHIA_HOST`` ``0.0.0.0`` -> ``127.0.0.1`` (only loopback here) and its port
  (container port 8000, ``PYTHIA_PORT``) -> a free port;
* the image's environment: ``PATH`` starts with this virtual environment's ``bin`` (the
  image's /opt/venv/bin), the working directory and ``PYTHONPATH`` are the repository root
  (the image's /app), ``HOSTNAME`` is this host's name (the container runtime sets it);
  ``OMP_NUM_THREADS=1`` keeps torch to one thread on this 2-core machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.helpers import REPO, load_compose
from tests.service.conftest import free_port
from tests.service.test_celery import RedisServer

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server (Debian's redis)")

CONTAINER_RELEASE = "/opt/pythia/demo/release"
CONTAINER_DATA = "/data"
CONTAINER_REDIS = "redis:6379"


class Topology:
    """What the compose file says, mapped onto this machine (see the module docstring)."""

    def __init__(self, release: Path, data_root: Path, redis_port: int, api_port: int) -> None:
        self.compose = load_compose()
        self.services: dict[str, Any] = self.compose["services"]
        self.release, self.data_root = release, data_root
        self.redis_port, self.api_port = redis_port, api_port

    def value(self, text: str) -> str:
        text = text.replace(CONTAINER_REDIS, f"127.0.0.1:{self.redis_port}")
        text = text.replace(CONTAINER_RELEASE, str(self.release))
        if text == CONTAINER_DATA or text.startswith(CONTAINER_DATA + "/"):
            text = str(self.data_root) + text[len(CONTAINER_DATA):]
        return text

    def environment(self, service: str) -> dict[str, str]:
        declared = {k: self.value(str(v))
                    for k, v in self.services[service].get("environment", {}).items()}
        if service == "api":
            assert declared["PYTHIA_HOST"] == "0.0.0.0" and declared["PYTHIA_PORT"] == "8000"
            declared["PYTHIA_HOST"], declared["PYTHIA_PORT"] = "127.0.0.1", str(self.api_port)
        for key, value in declared.items():  # every container path was mapped
            for container in ("/opt/pythia", "//redis:", "/models", "/runs"):
                assert container not in value, f"{service}: {key}={value} is not mapped"
        base = {k: v for k, v in os.environ.items() if not k.startswith("PYTHIA_")}
        venv_bin = str(Path(sys.executable).parent)
        return {**base, "PATH": f"{venv_bin}{os.pathsep}{base.get('PATH', '')}",
                "PYTHONPATH": str(REPO), "HOSTNAME": socket.gethostname(),
                "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", **declared}

    def command(self, service: str) -> list[str]:
        spec = self.services[service]
        assert "entrypoint" not in spec
        return [self.value(a) for a in spec["command"]]

    def healthcheck(self, service: str) -> tuple[list[str], dict[str, Any]]:
        check = dict(self.services[service]["healthcheck"])
        test = [self.value(a) for a in check.pop("test")]
        kind, rest = test[0], test[1:]
        if kind == "CMD-SHELL":
            shell = rest[0].replace("redis-cli", f"redis-cli -p {self.redis_port}")
            return ["sh", "-c", shell], check
        assert kind == "CMD", test
        return rest, check


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if duration.endswith(unit) and duration[:-len(unit)].replace(".", "").isdigit():
            return float(duration[:-len(unit)]) * units[unit]
    raise ValueError(duration)


def healthy(topology: Topology, service: str) -> tuple[bool, str]:
    args, _ = topology.healthcheck(service)
    env = topology.environment(service)
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    return proc.returncode == 0, proc.stderr[-500:]


def wait_healthy(topology: Topology, service: str, proc: subprocess.Popen[bytes] | None,
                 log: Path | None) -> None:
    """Compose's rule: healthy at the first passing check; give up after start_period plus
    `retries` failures at `interval` (checked every start_interval meanwhile)."""
    _, check = topology.healthcheck(service)
    limit = _seconds(check.get("start_period", "0s")) + \
        check.get("retries", 3) * _seconds(check.get("interval", "30s"))
    step = _seconds(check.get("start_interval", "5s"))
    deadline = time.monotonic() + limit
    why = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        ok, why = healthy(topology, service)
        if ok:
            return
        time.sleep(step)
    tail = log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""
    raise AssertionError(f"{service} never became healthy ({why})\n{tail}")


@pytest.fixture
def data_root(shapes_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(shapes_root / "vqa2", root / "shapes" / "vqa2")
    return root


@pytest.fixture
def topology(demo_release: Path, data_root: Path, tmp_path: Path) -> Iterator[Topology]:
    topo = Topology(demo_release, data_root, free_port(), free_port())
    redis = RedisServer(tmp_path, topo.services["redis"]["command"])  # compose's command
    redis.port = topo.redis_port
    redis.start()
    try:
        yield topo
    finally:
        redis.stop()


def _start(topology: Topology, service: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(topology.command(service), cwd=REPO,
                                env=topology.environment(service), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


def test_compose_topology_serves_vqa_and_runs_a_batch_job(
        topology: Topology, image_bytes: bytes, data_root: Path, tmp_path: Path) -> None:
    services = topology.services
    assert healthy(topology, "redis")[0]
    # depends_on: the API and the worker wait for a healthy Redis, nothing else
    for name in ("api", "worker"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}
    # the checks can fail: nothing answers yet
    assert not healthy(topology, "api")[0], "the API's check passes with no API running"
    assert not healthy(topology, "worker")[0], "the worker's check passes with no worker"

    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    worker = _start(topology, "worker", worker_log)
    api = _start(topology, "api", api_log)
    try:
        wait_healthy(topology, "api", api, api_log)
        wait_healthy(topology, "worker", worker, worker_log)
        url = f"http://127.0.0.1:{topology.api_port}"
        with httpx.Client(timeout=60) as c:
            ready = c.get(f"{url}/readyz").json()
            assert ready["queue"] == "celery" and ready["models"] == ["demo"]
            r = c.post(f"{url}/vqa", files={"image": ("a.jpg", image_bytes)},
                       data={"question": "what color is the circle?", "top_k": "3"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "demo" and len(body["answers"]) == 3

            r = c.post(f"{url}/jobs", json={"task": "vqa", "dataset": "vqa2", "split": "val",
                                            "data_dir": "shapes/vqa2", "shard_size": 16})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 120
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = c.get(f"{url}/jobs/{job_id}").json()
                if status["status"] in ("done", "failed"):
                    break
                time.sleep(0.2)
            assert status.get("status") == "done", status
            rows = c.get(f"{url}/jobs/{job_id}/result").json()
        questions = json.loads((data_root / "shapes" / "vqa2" /
                                "v2_OpenEnded_mscoco_val2014_questions.json").read_text())
        expected = sorted(q["question_id"] for q in questions["questions"])
        assert sorted(row["question_id"] for row in rows) == expected
        assert all(isinstance(row["answer"], str) for row in rows)
    finally:
        # docker compose stop: SIGTERM, SIGKILL after stop_grace_period
        api_code = _stop(api, _seconds(services["api"]["stop_grace_period"]))
        worker_code = _stop(worker, _seconds(services["worker"]["stop_grace_period"]))
    assert api_code == 0, api_log.read_text(errors="replace")[-3000:]
    assert worker_code == 0, worker_log.read_text(errors="replace")[-3000:]

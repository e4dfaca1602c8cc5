"""EvalAI batch-prediction jobs: local mode (a thread pool in the API) and Celery mode (real
redis-server, real workers, one of them killed mid-job), each compared with the file
``training.predict`` writes for the same release and split."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.runners import LoadedModel, load_model
from tests.service.conftest import LiveServer
from tests.service.test_celery import RedisServer, start_worker, stop_worker
from training.data import shapes
from training.predict import predict


def _job(c: httpx.Client, url: str, **body: Any) -> httpx.Response:
    return c.post(f"{url}/jobs", json=body)


def _wait(c: httpx.Client, url: str, job_id: str, timeout: float = 120,
          on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status: dict[str, Any] = c.get(f"{url}/jobs/{job_id}").json()
        if on_progress is not None:
            on_progress(status)
        if status["status"] in ("done", "failed"):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {status}")


def _reference(release: Path, data_dir: Path, split: str, tmp: Path) -> list[Any]:
    out = tmp / "reference.json"
    predict(release, "vqa2", data_dir, split, out, batch_size=16, device="cpu")
    rows: list[Any] = json.loads(out.read_text())
    return rows


def _by_key(rows: list[Any]) -> list[Any]:
    return sorted(rows, key=lambda r: r["question_id"])


def test_local_job_equals_training_predict(serve: Callable[..., LiveServer],
                                           shapes_root: Path, demo_release: Path,
                                           tmp_path: Path) -> None:
    server = serve(data_root=str(shapes_root))
    with httpx.Client(timeout=60) as c:
        r = _job(c, server.url, task="vqa", dataset="vqa2", split="val", data_dir="vqa2",
                 shard_size=7, batch_size=4)
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/jobs/{job['job_id']}"
        assert job["progress"] == {"done": 0, "total": 40}
        final = _wait(c, server.url, job["job_id"])
        assert final["status"] == "done" and final["progress"] == {"done": 40, "total": 40}
        result = c.get(f"{server.url}/jobs/{job['job_id']}/result")
        assert result.status_code == 200
        assert "attachment" in result.headers["content-disposition"]
        rows = result.json()
    reference = _reference(demo_release, shapes_root / "vqa2", "val", tmp_path)
    assert len(rows) == 40 and _by_key(rows) == _by_key(reference)


def test_idempotency_key_makes_a_retry_return_the_same_job(
        serve: Callable[..., LiveServer], shapes_root: Path) -> None:
    server = serve(data_root=str(shapes_root))
    body = {"task": "vqa", "dataset": "vqa2", "split": "val", "data_dir": "vqa2"}
    with httpx.Client(timeout=60) as c:
        first = c.post(f"{server.url}/jobs", json=body, headers={"Idempotency-Key": "run-7"})
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        job_id = first.json()["job_id"]
        again = c.post(f"{server.url}/jobs", json=body, headers={"Idempotency-Key": "run-7"})
        assert again.status_code == 200 and again.json()["job_id"] == job_id
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["location"] == f"/jobs/{job_id}"
        other = c.post(f"{server.url}/jobs", json={**body, "batch_size": 3},
                       headers={"Idempotency-Key": "run-7"})
        assert other.status_code == 422
        assert other.json()["error"]["code"] == "idempotency_key_reused"
        fresh = c.post(f"{server.url}/jobs", json=body, headers={"Idempotency-Key": "run-8"})
        assert fresh.status_code == 202 and fresh.json()["job_id"] != job_id
        unkeyed = [c.post(f"{server.url}/jobs", json=body).json()["job_id"] for _ in range(2)]
        assert len(set(unkeyed)) == 2  # no key: each POST is a new job
        for bad in ("", "x" * 256, "caf\u00e9", "a b"):
            r = c.post(f"{server.url}/jobs", json=body,
                       headers={"Idempotency-Key": bad.encode("utf-8")})  # type: ignore[dict-item]
            assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_header", bad
        assert _wait(c, server.url, job_id)["status"] == "done"


def test_job_request_checks(serve: Callable[..., LiveServer], shapes_root: Path,
                            tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "vqa2").symlink_to(shapes_root / "vqa2")  # points outside the root
    (root / "empty").mkdir()
    server = serve(data_root=str(root))
    base = {"task": "vqa", "dataset": "vqa2", "split": "val"}

    def error(r: httpx.Response, status: int, code: str) -> None:
        assert r.status_code == status, r.text
        assert r.json()["error"]["code"] == code, r.text

    with httpx.Client(timeout=30) as c:
        error(_job(c, server.url, **base, data_dir="../"), 403, "forbidden_path")
        error(_job(c, server.url, **base, data_dir=str(shapes_root / "vqa2")), 403,
              "forbidden_path")
        error(_job(c, server.url, **base, data_dir="vqa2"), 403, "forbidden_path")
        error(_job(c, server.url, **base, data_dir="nope"), 404, "data_dir_not_found")
        error(_job(c, server.url, **base, data_dir="empty"), 422, "invalid_dataset")
        error(_job(c, server.url, **{**base, "split": "dev"}, data_dir="empty"), 422,
              "invalid_field")
        error(_job(c, server.url, **{**base, "task": "caption"}, data_dir="empty"), 422,
              "invalid_field")
        error(_job(c, server.url, **base, data_dir="empty", colour=1), 422, "invalid_field")
        error(_job(c, server.url, **base, data_dir="empty", model="x"), 404, "model_not_found")
        error(c.post(f"{server.url}/jobs", content=b"{"), 400, "invalid_json")
        error(c.get(f"{server.url}/jobs/{'0' * 32}"), 404, "job_not_found")
        error(c.get(f"{server.url}/jobs/../../etc"), 404, "not_found")
        error(c.get(f"{server.url}/jobs/xyz/result"), 404, "job_not_found")


@pytest.fixture(scope="module")
def big_vqa(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A larger val split (300 questions), so a job is still running when a worker dies."""
    root = tmp_path_factory.mktemp("big_vqa")
    shapes.generate(root, seed=9, train_images=4, val_images=60, test_images=1, image_size=64,
                    workers=1, datasets="vqa2")
    return root


@pytest.fixture(scope="module")
def front(demo_release: Path) -> LoadedModel:
    return load_model("demo", demo_release, weights=False)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_celery_job_survives_a_killed_worker(serve: Callable[..., LiveServer],
                                             front: LoadedModel, demo_release: Path,
                                             big_vqa: Path, own_redis: RedisServer,
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The killed worker's unacknowledged shards come back after the visibility timeout; a
    # shard whose message died with it in kombu's fetch window is queued again by the API's
    # reconciler after PYTHIA_JOB_IDLE_S without progress.
    monkeypatch.setenv("PYTHIA_JOB_IDLE_S", "6")
    env = {"PYTHIA_VISIBILITY_TIMEOUT_S": "4", "PYTHIA_DATA_ROOT": str(big_vqa)}
    first = start_worker(demo_release, own_redis.url, concurrency=1, extra_env=env)
    server = serve(models={"demo": front}, queue="celery", redis_url=own_redis.url,
                   data_root=str(big_vqa))
    second = None
    try:
        with httpx.Client(timeout=60) as c:
            r = _job(c, server.url, task="vqa", dataset="vqa2", split="val", data_dir="vqa2",
                     shard_size=10, batch_size=10)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            assert r.json()["progress"]["total"] == 300

            def kill_midway(status: dict[str, Any]) -> None:
                if first.poll() is None and status["progress"]["done"] >= 60:
                    os.kill(first.pid, signal.SIGKILL)  # mid-shard, unacknowledged
                    first.wait()

            deadline = time.monotonic() + 120
            while first.poll() is None and time.monotonic() < deadline:
                kill_midway(c.get(f"{server.url}/jobs/{job_id}").json())
                time.sleep(0.02)
            status = c.get(f"{server.url}/jobs/{job_id}").json()
            assert first.poll() is not None and status["status"] == "running", status
            second = start_worker(demo_release, own_redis.url, concurrency=2, extra_env=env)
            final = _wait(c, server.url, job_id, timeout=150)
            assert final["status"] == "done", final
            assert final["progress"] == {"done": 300, "total": 300}
            rows = c.get(f"{server.url}/jobs/{job_id}/result").json()
    finally:
        stop_worker(first)
        if second is not None:
            stop_worker(second)
    ids = [r["question_id"] for r in rows]
    assert len(ids) == 300 and len(set(ids)) == 300  # every question exactly once
    reference = _reference(demo_release, big_vqa / "vqa2", "val", tmp_path)
    assert _by_key(rows) == _by_key(reference)


@pytest.mark.parametrize("fsync,stop", [("everysec", "restart"), ("always", "crash")])
def test_celery_job_survives_a_redis_restart(serve: Callable[..., LiveServer],
                                             front: LoadedModel, demo_release: Path,
                                             big_vqa: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch, fsync: str,
                                             stop: str) -> None:
    # Redis with an append-only file, stopped mid-job: restarted as Compose and Kubernetes
    # restart it (SIGTERM: it flushes the file; their `appendfsync everysec`), or crashed
    # (SIGKILL) with `appendfsync always`. While it is gone the job's status answers 503 +
    # Retry-After and /readyz says so; once it is back (same port, same files) the job
    # finishes by itself with every question exactly once and the same rows as
    # training.predict.
    monkeypatch.setenv("PYTHIA_JOB_IDLE_S", "6")
    aof = RedisServer(tmp_path, ["redis-server", "--save", "", "--appendonly", "yes",
                                 "--appendfsync", fsync]).start()
    env = {"PYTHIA_VISIBILITY_TIMEOUT_S": "4", "PYTHIA_DATA_ROOT": str(big_vqa)}
    worker = start_worker(demo_release, aof.url, concurrency=1, extra_env=env)
    server = serve(models={"demo": front}, queue="celery", redis_url=aof.url,
                   data_root=str(big_vqa))
    try:
        with httpx.Client(timeout=60) as c:
            body = {"task": "vqa", "dataset": "vqa2", "split": "val", "data_dir": "vqa2",
                    "shard_size": 10, "batch_size": 10}
            key = {"Idempotency-Key": f"redis-{stop}"}
            r = c.post(f"{server.url}/jobs", json=body, headers=key)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            deadline = time.monotonic() + 120
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                status = c.get(f"{server.url}/jobs/{job_id}").json()
                if status["progress"]["done"] >= 60:
                    break
                time.sleep(0.02)
            assert status["status"] == "running" and status["progress"]["done"] < 300, status
            assert aof.proc is not None
            if stop == "crash":
                aof.proc.kill()
                aof.proc.wait()
                aof.proc = None
            else:
                aof.stop()
            gone = c.get(f"{server.url}/jobs/{job_id}")
            assert gone.status_code == 503 and gone.headers["retry-after"] == "1"
            assert gone.json()["error"]["code"] == "queue_unavailable"
            assert c.get(f"{server.url}/readyz").status_code == 503
            retry = c.post(f"{server.url}/jobs", json=body, headers=key)
            assert retry.status_code == 503 and retry.headers["retry-after"] == "1"
            time.sleep(3)  # the worker meets the outage mid-shard
            aof.start()
            retry = c.post(f"{server.url}/jobs", json=body, headers=key)  # the client retries
            assert retry.status_code == 200 and retry.json()["job_id"] == job_id, retry.text
            final = _wait(c, server.url, job_id, timeout=150)
            assert final["status"] == "done", final
            assert final["progress"] == {"done": 300, "total": 300}
            rows = c.get(f"{server.url}/jobs/{job_id}/result").json()
            assert c.get(f"{server.url}/readyz").status_code == 200
    finally:
        stop_worker(worker)
        aof.stop()
    ids = [r["question_id"] for r in rows]
    assert len(ids) == 300 and len(set(ids)) == 300  # every question exactly once
    reference = _reference(demo_release, big_vqa / "vqa2", "val", tmp_path)
    assert _by_key(rows) == _by_key(reference)


def test_reconciler_requeues_lost_shards(front: LoadedModel, demo_release: Path,
                                         big_vqa: Path, own_redis: RedisServer) -> None:
    # No worker: the job's shard messages sit in the queue. Lose two of them as a dying
    # worker can (popped from the list, never recorded as unacknowledged).
    import redis

    from service.jobs import JobRequest, plan_job
    from service.remote import CeleryClient
    from service.settings import Settings

    client = CeleryClient(Settings(queue="celery", redis_url=own_redis.url))
    meta = plan_job(JobRequest(task="vqa", dataset="vqa2", split="val", data_dir="vqa2",
                               shard_size=50), front.front, big_vqa, "demo")
    client.submit_job(meta)
    r = redis.Redis.from_url(own_redis.url)
    assert r.llen("pythia.jobs") == 6
    assert client.reconcile_jobs(idle_s=0) == []  # every shard still has its message
    r.rpop("pythia.jobs")  # kombu consumes from the right
    r.rpop("pythia.jobs")
    assert client.reconcile_jobs(idle_s=3600) == []  # not idle long enough
    (job_id, shards), = client.reconcile_jobs(idle_s=0)
    assert job_id == meta["job_id"] and shards == [0, 1]
    assert r.llen("pythia.jobs") == 6
    assert client.jobs.get(job_id)["requeued"] == 2


def test_a_redis_stall_does_not_fail_the_job(demo_model: LoadedModel, big_vqa: Path,
                                             own_redis: RedisServer) -> None:
    # Redis holds writes for longer than the store's socket timeout (CLIENT PAUSE, as an fsync
    # or fork stall does) just as a shard stores its rows, and takes them again before the
    # error handler's write would time out. The shard raises a store error and the job stays
    # running, so a redelivery completes it; it is not marked failed for Redis's hiccup.
    import redis

    from service.jobs import STORE_ERRORS, JobRequest, RedisJobStore, plan_job, run_shard

    class StallingStore(RedisJobStore):
        def put_shard(self, job_id: str, index: int, rows: list[Any]) -> tuple[int, int]:
            redis.Redis.from_url(own_redis.url).execute_command("CLIENT", "PAUSE", "500",
                                                                "WRITE")
            return super().put_shard(job_id, index, rows)  # times out after 0.3 s

    fast = redis.Redis.from_url(own_redis.url, socket_timeout=0.3)
    store = StallingStore(fast)
    assert demo_model.runner is not None
    predictor = demo_model.runner.predictor
    meta = plan_job(JobRequest(task="vqa", dataset="vqa2", split="val", data_dir="vqa2",
                               shard_size=50), predictor, big_vqa, "demo")
    store.create(meta["job_id"], meta)
    with pytest.raises(STORE_ERRORS):
        run_shard(store, predictor, meta["job_id"], 0)
    after = RedisJobStore(redis.Redis.from_url(own_redis.url)).get(meta["job_id"])
    assert after is not None and after["status"] == "running" and after["error"] is None
    run_shard(RedisJobStore(fast), predictor, meta["job_id"], 0)  # the redelivery
    assert RedisJobStore(fast).done_shards(meta["job_id"]) == {0}

"""The Celery worker: ``celery -A service.worker worker --pool threads --concurrency 32``.

It reads the same settings as the API (``PYTHIA_MODELS``, ``PYTHIA_DEVICE``,
``PYTHIA_MAX_BATCH_SIZE``, ``PYTHIA_MAX_WAIT_MS``, ``PYTHIA_REDIS_URL``, ...), loads each model
once per process (after the fork under prefork; see ``service.queue`` for every setting and
why) and runs the very same batching engine as the in-process service: each task thread
submits its one request to the process's ``Batcher`` and waits, so concurrent tasks become
one batch on the GPU. Give ``--concurrency`` at least ``PYTHIA_MAX_BATCH_SIZE``.

Queues: ``pythia.vqa``, ``pythia.textvqa``, ``pythia.caption``, ``pythia.dialog`` (one per
task kind) and ``pythia.jobs`` (batch-prediction shards); a worker takes all of them unless
``-Q`` says otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery.signals import worker_process_init, worker_ready

from service.engine import Batcher, DeadlineExceeded, EngineError
from service.jobs import STORE_ERRORS, RedisJobStore, run_shard
from service.queue import TASK_QUEUES, cancel_key, make_celery, result_key
from service.runners import Job, LoadedModel, TaskError, load_model
from service.settings import Settings

__all__ = ["app", "engines"]

log = logging.getLogger("pythia.worker")
settings = Settings()
app = make_celery(settings)

_lock = threading.Lock()
_models: dict[str, LoadedModel] = {}
_engines: dict[str, Batcher] = {}
_redis: redis.Redis | None = None


def engines() -> dict[str, Batcher]:
    """This process's engines, loading the models on first use (one thread does it)."""
    with _lock:
        if not _engines:
            specs = settings.model_specs()
            if not specs:
                raise RuntimeError("no model to serve: set PYTHIA_MODELS for the worker")
            for spec in specs:
                t0 = time.perf_counter()
                model = load_model(spec.name, spec.path, device=settings.device)
                assert model.runner is not None
                _models[spec.name] = model
                _engines[spec.name] = Batcher(
                    model.runner.predict, max_batch_size=settings.max_batch_size,
                    max_wait_ms=settings.max_wait_ms, queue_size=settings.queue_size,
                    name=spec.name).start()
                log.info("loaded %s from %s in %.1f s", spec.name, spec.path,
                         time.perf_counter() - t0)
        return _engines


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                      socket_connect_timeout=2)
    return _redis


def _reply(task_id: str, payload: dict[str, Any]) -> None:
    key = result_key(task_id)
    ttl = int(app.conf.result_expires or 3600)
    pipe = _client().pipeline()
    pipe.lpush(key, json.dumps(payload, separators=(",", ":")))
    pipe.expire(key, ttl)
    pipe.execute()


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"error": {"status": status, "code": code, "message": message}}


def serve_request(task_id: str, model: str, message: dict[str, Any], deadline: float) -> None:
    """Run one queued request and push its outcome to ``result_key(task_id)``.

    ``deadline`` is a Unix time: past it the request is answered 504 without running (the
    threads pool has no time limits of its own)."""
    received = time.time()
    if received >= deadline:
        _reply(task_id, _error(504, "deadline_exceeded", "the request waited in the queue "
                               "past its deadline"))
        return
    if _client().exists(cancel_key(task_id)):
        return  # the client went away: nobody reads the result
    try:
        engine = engines().get(model)
        if engine is None:
            _reply(task_id, _error(404, "model_not_found",
                                   f"this worker does not serve model {model!r}"))
            return
        job = Job.from_message(message)
        # Same engine as the in-process service: batches form across this worker's threads.
        result = engine.run(job, key=job.key, timeout=max(0.0, deadline - time.time()))
        # when its batch began, as a Unix time (the API measures its queue time from it)
        result["started_at"] = time.time() - (time.perf_counter() - job.started)
        _reply(task_id, {"result": result})
    except DeadlineExceeded as exc:
        _reply(task_id, _error(504, "deadline_exceeded", str(exc)))
    except TaskError as exc:
        _reply(task_id, _error(exc.status, exc.code, exc.message))
    except EngineError as exc:
        _reply(task_id, _error(503, "worker_unavailable", str(exc)))
    except Exception:
        log.exception("request %s failed", task_id)
        _reply(task_id, _error(500, "internal_error", "the worker failed on this request; "
                               "see its log"))


def _register(kind: str) -> None:
    @app.task(name=f"pythia.{kind}", bind=True)
    def run(self: Any, model: str, message: dict[str, Any], deadline: float) -> None:
        serve_request(str(self.request.id), model, message, deadline)


for _kind in TASK_QUEUES:
    _register(_kind)


_jobs: RedisJobStore | None = None
# Shards already batch their items: running many at once in one process only splits the
# same cores (or GPU) between them. PYTHIA_JOB_CONCURRENCY shards run at a time per process.
_shard_slots = threading.Semaphore(max(1, int(os.environ.get("PYTHIA_JOB_CONCURRENCY", "1"))))


@app.task(name="pythia.job_shard", bind=True)
def job_shard(self: Any, job_id: str, index: int) -> None:
    """One shard of a batch-prediction job (``service.jobs``): idempotent, so a redelivery
    after a worker died only overwrites the same rows. While Redis is unreachable (restarting,
    or loading its append-only file) the shard is tried again every second for up to
    ``PYTHIA_JOB_STORE_RETRY_S`` (300) rather than failed: the job lives in Redis and comes
    back with it."""
    global _jobs
    if _jobs is None:
        _jobs = RedisJobStore(_client())
    patience = float(os.environ.get("PYTHIA_JOB_STORE_RETRY_S", "300"))
    give_up = time.monotonic() + patience
    while True:
        try:
            _job_shard(_jobs, job_id, index)
            return
        except STORE_ERRORS as exc:
            if time.monotonic() >= give_up:
                raise  # the API's reconciler queues the shard again once Redis is back
            log.warning("job %s shard %s: Redis unreachable (%s); trying again", job_id,
                        index, exc)
            time.sleep(1.0)


def _job_shard(store: RedisJobStore, job_id: str, index: int) -> None:
    meta = store.get(job_id)
    if meta is None:
        return  # expired or unknown: nothing to do
    engines()
    model = _models.get(str(meta["model"]))
    if model is None or model.runner is None:
        store.update(job_id, status="failed", error=f"this worker does not serve model "
                     f"{meta['model']!r}")
        return
    with _shard_slots:
        run_shard(store, model.runner.predictor, job_id, index, Path(settings.data_root))


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    """prefork: load in each child, after the fork (CUDA must not be initialised before)."""
    engines()


@worker_ready.connect
def _load_in_process(sender: Any = None, **_: Any) -> None:
    """threads/solo: load in this process before the first task arrives."""
    pool = getattr(sender, "pool", None)
    if pool is not None and "prefork" in type(pool).__module__:
        return  # the children load their own
    engines()

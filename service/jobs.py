"""EvalAI batch-prediction jobs: ``POST /jobs`` predicts a whole split into an EvalAI file.

A job is split into shards (contiguous ranges of the split's items). Each shard runs the
prediction code of ``training.predict`` (``predict_rows``) and stores its rows under its own
key, overwriting: a shard that runs twice (a Celery redelivery after a worker died) replaces
its rows, it never adds a second copy. Progress counts a shard the first time it completes
(a set of completed shard indices), so it never counts twice either. When every shard is in,
the one that completed last validates the whole result against the split's expected keys
(``training.predict.validate_rows``) and marks the job ``done``; ``GET /jobs/{id}/result``
then streams the shards in order as one JSON list.

Where shards run and rows live:

* local mode: a thread pool in the API process, rows in memory (``MemoryJobStore``; jobs do
  not survive a restart);
* Celery mode: one ``pythia.job_shard`` task per shard on the ``pythia.jobs`` queue (late
  acknowledgement: a shard whose worker is killed is redelivered to another), rows and
  progress in Redis (``RedisJobStore``), so any API replica can answer for any job.

Job states: ``queued`` -> ``running`` -> ``done`` | ``failed`` (with ``error``).
``data_dir`` is relative to ``PYTHIA_DATA_ROOT``; a path that resolves outside it (``..``,
an absolute path, a symlink pointing out) is refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Protocol

import redis
from pydantic import BaseModel, Field

from training.predict import (
    TASK_OF,
    build_split,
    check_serves,
    expected_keys,
    generic_split,
    predict_rows,
    validate_rows,
)

__all__ = ["STORE_ERRORS", "TASK_OF", "JobError", "JobRequest", "JobStore", "MemoryJobStore",
           "RedisJobStore", "resolve_data_dir", "run_shard"]

DEFAULT_SHARD = 256  # items per shard
#: The job store could not be reached (Redis restarting or loading its append-only file). Not
#: the job's fault: a shard that meets one is not marked failed; it runs again.
STORE_ERRORS: tuple[type[Exception], ...] = (redis.exceptions.ConnectionError,
                                             redis.exceptions.TimeoutError)


class JobError(ValueError):
    """A job request that cannot be accepted (HTTP status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class JobRequest(BaseModel):
    model_config = {"extra": "forbid"}

    task: Literal["vqa", "textvqa", "caption", "dialog"]
    dataset: Literal["vqa2", "textvqa", "vizwiz", "coco", "visdial"]
    split: str = Field(min_length=1, max_length=32)
    data_dir: str = Field(min_length=1, max_length=1024)
    model: str | None = Field(None, max_length=128)
    batch_size: int = Field(32, ge=1, le=1024)
    beam_size: int = Field(1, ge=1, le=10)
    max_length: int = Field(20, ge=1, le=50)
    shard_size: int = Field(DEFAULT_SHARD, ge=1, le=100_000)


def resolve_data_dir(root: Path, relative: str) -> Path:
    """``root / relative`` resolved, refused (403) if it leaves ``root``, 404 if missing."""
    if "\x00" in relative or Path(relative).is_absolute():
        raise JobError(403, "forbidden_path", f"data_dir {relative!r} must be relative to "
                       "PYTHIA_DATA_ROOT")
    base = root.resolve()
    target = (base / relative).resolve()
    if target != base and base not in target.parents:
        raise JobError(403, "forbidden_path", f"data_dir {relative!r} resolves outside "
                       "PYTHIA_DATA_ROOT")
    if not target.is_dir():
        raise JobError(404, "data_dir_not_found", f"data_dir {relative!r} is not a directory "
                       "under PYTHIA_DATA_ROOT")
    return target


# -- stores ----------------------------------------------------------------------------------------
class JobStore(Protocol):
    def create(self, job_id: str, meta: dict[str, Any]) -> None: ...
    def get(self, job_id: str) -> dict[str, Any] | None: ...
    def update(self, job_id: str, **fields: Any) -> None: ...
    def put_shard(self, job_id: str, index: int, rows: list[Any]) -> tuple[int, int]:
        """Store a shard's rows (replacing any earlier copy); returns (done items, done
        shards) after counting this shard once."""
        ...
    def shard_rows(self, job_id: str, index: int) -> list[Any]: ...
    def claim_key(self, key: str, value: str) -> str | None:
        """Bind an idempotency key (already hashed) to ``value`` unless it is bound: None
        when this call bound it, else the value bound before."""
        ...
    def release_key(self, key: str) -> None: ...


class MemoryJobStore:
    """Local mode: everything in this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, dict[str, Any]] = {}
        self._rows: dict[tuple[str, int], list[Any]] = {}
        self._done: dict[str, set[int]] = {}
        self._keys: dict[str, str] = {}

    def create(self, job_id: str, meta: dict[str, Any]) -> None:
        with self._lock:
            self._meta[job_id] = dict(meta)
            self._done[job_id] = set()

    def claim_key(self, key: str, value: str) -> str | None:
        with self._lock:
            if key in self._keys:
                return self._keys[key]
            self._keys[key] = value
            return None

    def release_key(self, key: str) -> None:
        with self._lock:
            self._keys.pop(key, None)

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            meta = self._meta.get(job_id)
            return dict(meta) if meta is not None else None

    def update(self, job_id: str, **fields: Any) -> None:
        with self._lock:
            self._meta[job_id].update(fields)

    def put_shard(self, job_id: str, index: int, rows: list[Any]) -> tuple[int, int]:
        with self._lock:
            self._rows[(job_id, index)] = list(rows)
            meta = self._meta[job_id]
            if index not in self._done[job_id]:
                self._done[job_id].add(index)
                meta["done"] = int(meta.get("done", 0)) + len(rows)
            return int(meta["done"]), len(self._done[job_id])

    def shard_rows(self, job_id: str, index: int) -> list[Any]:
        with self._lock:
            return list(self._rows.get((job_id, index), []))


class RedisJobStore:
    """Celery mode: ``pythia:job:<id>`` (hash: the meta, JSON-encoded fields),
    ``pythia:job:<id>:done`` (set of completed shard indices), ``pythia:job:<id>:shard:<i>``
    (the shard's rows as one JSON list). Every key expires after ``ttl`` seconds."""

    def __init__(self, client: Any, ttl: int = 7 * 24 * 3600) -> None:
        self.r, self.ttl = client, ttl

    @staticmethod
    def _key(job_id: str, *parts: Any) -> str:
        return ":".join(["pythia:job", job_id, *map(str, parts)])

    def create(self, job_id: str, meta: dict[str, Any], *, active: bool = False) -> None:
        """Store a job's meta; ``active`` also lists it for reconciliation, in the same
        transaction (a job stored but not listed would never be reconciled)."""
        key = self._key(job_id)
        pipe = self.r.pipeline()
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in meta.items()})
        pipe.expire(key, self.ttl)
        if active:
            pipe.sadd(self.ACTIVE, job_id)
        pipe.execute()

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(self._key(job_id))
        if not raw:
            return None
        return {(k.decode() if isinstance(k, bytes) else k): json.loads(v)
                for k, v in raw.items()}

    def update(self, job_id: str, **fields: Any) -> None:
        self.r.hset(self._key(job_id), mapping={k: json.dumps(v) for k, v in fields.items()})

    def put_shard(self, job_id: str, index: int, rows: list[Any]) -> tuple[int, int]:
        shard = self._key(job_id, "shard", index)
        done = self._key(job_id, "done")
        pipe = self.r.pipeline()
        pipe.set(shard, json.dumps(rows, separators=(",", ":")), ex=self.ttl)
        pipe.sadd(done, index)
        pipe.expire(done, self.ttl)
        first = pipe.execute()[1]
        if first:  # counted once, whatever the redeliveries
            self.r.hincrby(self._key(job_id), "done", len(rows))
        self.r.hset(self._key(job_id), "progress_at", json.dumps(time.time()))
        meta = self.get(job_id) or {}
        return int(meta.get("done", 0)), int(self.r.scard(done))

    def shard_rows(self, job_id: str, index: int) -> list[Any]:
        raw = self.r.get(self._key(job_id, "shard", index))
        return json.loads(raw) if raw else []

    def claim_key(self, key: str, value: str) -> str | None:
        name = f"pythia:jobs:key:{key}"
        if self.r.set(name, value, nx=True, ex=self.ttl):
            return None
        raw = self.r.get(name)
        return raw.decode() if isinstance(raw, bytes) else raw

    def release_key(self, key: str) -> None:
        self.r.delete(f"pythia:jobs:key:{key}")

    # -- reconciliation: shards whose message the broker lost ----------------------------------
    ACTIVE = "pythia:jobs:active"

    def done_shards(self, job_id: str) -> set[int]:
        return {int(x) for x in self.r.smembers(self._key(job_id, "done"))}

    def queued_shards(self, queue: str) -> dict[str, set[int]]:
        """job id -> shard indices with a message in ``queue`` or awaiting acknowledgement
        (kombu's ``unacked`` hash): the shards some worker will still run."""
        out: dict[str, set[int]] = {}

        def note(message: Any) -> None:
            try:
                args = json.loads(base64.b64decode(message["body"]))[0]
                if message.get("headers", {}).get("task") == "pythia.job_shard":
                    out.setdefault(str(args[0]), set()).add(int(args[1]))
            except (KeyError, IndexError, TypeError, ValueError):
                pass

        for raw in self.r.lrange(queue, 0, -1):
            with contextlib.suppress(ValueError):
                note(json.loads(raw))
        for raw in self.r.hvals("unacked"):
            with contextlib.suppress(ValueError, IndexError, TypeError):
                note(json.loads(raw)[0])
        return out


# -- running ---------------------------------------------------------------------------------------
_splits: dict[tuple[str, str, str, int], Any] = {}
_splits_lock = threading.Lock()


def _split_for(predictor: Any, dataset: str, data_dir: str, split: str) -> Any:
    """The split's reader, built once per process and model (readers hold no open files)."""
    key = (dataset, data_dir, split, id(predictor))
    with _splits_lock:
        ds = _splits.get(key)
        if ds is None:
            ds = build_split(dataset, data_dir, split, predictor.processors)
            _splits[key] = ds
        return ds


def run_shard(store: JobStore, predictor: Any, job_id: str, index: int,
              data_root: Path | None = None) -> None:
    """Predict shard ``index`` of a job with ``predictor`` (a ``models.Predictor``) and store
    it; the last shard to complete validates the job and marks it done. Errors mark the job
    failed (and are raised again, so a Celery task fails visibly). ``data_root``: resolve
    the job's ``data_dir`` under it (workers) instead of using the API's path."""
    meta = store.get(job_id)
    if meta is None or meta.get("status") in ("done", "failed"):
        return
    if meta.get("status") == "queued":
        store.update(job_id, status="running", started_at=time.time())
    try:
        # A worker finds the data under its own PYTHIA_DATA_ROOT (the same files, mounted
        # where that machine has them); in-process, the path the API resolved.
        path = str(resolve_data_dir(data_root, meta["data_dir"])) if data_root is not None \
            else meta["data_path"]
        meta["data_path"] = path
        ds = _split_for(predictor, meta["dataset"], path, meta["split"])
        start = index * int(meta["shard_size"])
        stop = min(int(meta["total"]), start + int(meta["shard_size"]))
        rows: list[Any] = []
        for batch in predict_rows(predictor.model, predictor.processors, ds, meta["dataset"],
                                  meta["split"], range(start, stop), predictor.device,
                                  batch_size=int(meta["batch_size"]),
                                  beam_size=int(meta["beam_size"]),
                                  max_length=int(meta["max_length"])):
            rows.extend(batch)
        _, shards_done = store.put_shard(job_id, index, rows)
        if shards_done >= int(meta["shards"]):
            _finish(store, job_id, ds, meta)
    except STORE_ERRORS:
        raise  # nothing to record it in; the caller (or a redelivery) runs the shard again
    except Exception as exc:
        store.update(job_id, status="failed", error=f"shard {index}: {exc}",
                     finished_at=time.time())
        raise


def _finish(store: JobStore, job_id: str, ds: Any, meta: dict[str, Any]) -> None:
    rows: list[Any] = []
    for i in range(int(meta["shards"])):
        rows.extend(store.shard_rows(job_id, i))
    expected = expected_keys(ds, meta["dataset"], meta["data_path"], meta["split"])
    validate_rows(meta["dataset"], rows, expected, int(getattr(ds, "O", 100)))
    store.update(job_id, status="done", rows=len(rows), finished_at=time.time())


def plan_job(request: JobRequest, predictor_or_front: Any, data_root: Path,
             model_name: str) -> dict[str, Any]:
    """Validate a job request against the model and the data; the job's meta (status
    ``queued``). Raises JobError."""
    if TASK_OF[request.dataset] != request.task:
        raise JobError(422, "invalid_field", f"task {request.task!r} does not predict "
                       f"{request.dataset} (that is {TASK_OF[request.dataset]!r})")
    path = resolve_data_dir(data_root, request.data_dir)
    try:
        split = generic_split(request.dataset, request.split)
    except ValueError as exc:
        raise JobError(422, "invalid_field", f"split: {exc}") from None
    model = getattr(predictor_or_front, "model", None)
    if model is not None:
        try:
            check_serves(model, request.dataset)
        except ValueError as exc:
            raise JobError(422, "task_not_served", str(exc)) from None
    try:
        ds = build_split(request.dataset, path, split, predictor_or_front.processors)
    except (ValueError, OSError, KeyError) as exc:
        raise JobError(422, "invalid_dataset", f"{request.dataset} {split} in "
                       f"{request.data_dir!r}: {exc}") from None
    total = len(ds)
    if total == 0:
        raise JobError(422, "invalid_dataset", f"{request.dataset} {split} has no items")
    shards = math.ceil(total / request.shard_size)
    return {"job_id": uuid.uuid4().hex, "status": "queued", "task": request.task,
            "dataset": request.dataset, "split": split, "data_dir": request.data_dir,
            "data_path": str(path), "model": model_name, "total": total, "done": 0,
            "shards": shards, "shard_size": request.shard_size,
            "batch_size": request.batch_size, "beam_size": request.beam_size,
            "max_length": request.max_length, "created_at": time.time(), "error": None}


def public_status(meta: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"job_id": meta["job_id"], "status": meta["status"],
                           "progress": {"done": int(meta.get("done", 0)),
                                        "total": int(meta["total"])},
                           "task": meta["task"], "dataset": meta["dataset"],
                           "split": meta["split"], "model": meta["model"]}
    if meta.get("error"):
        out["error"] = meta["error"]
    if meta.get("status") == "done":
        out["rows"] = meta.get("rows")
    return out


def stream_result(store: JobStore, job_id: str, shards: int) -> Iterator[bytes]:
    """The EvalAI file, one shard at a time (memory: one shard)."""
    yield b"["
    first = True
    for i in range(shards):
        for row in store.shard_rows(job_id, i):
            yield (b"" if first else b",") + json.dumps(row, separators=(",", ":")).encode()
            first = False
    yield b"]"


class LocalJobs:
    """Local mode's runner: shards on a thread pool of this process."""

    def __init__(self, workers: int = 1) -> None:
        # one shard at a time: a shard already batches, and shares the cores with requests
        self.store = MemoryJobStore()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="job")

    def submit(self, meta: dict[str, Any], predictor: Any) -> None:
        self.store.create(meta["job_id"], meta)
        for i in range(int(meta["shards"])):
            self.pool.submit(_quiet, self.store, predictor, meta["job_id"], i)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _quiet(store: JobStore, predictor: Any, job_id: str, index: int) -> None:
    with contextlib.suppress(Exception):  # recorded in the job's status by run_shard
        run_shard(store, predictor, job_id, index)

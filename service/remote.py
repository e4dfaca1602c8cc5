"""The API side of ``PYTHIA_QUEUE=celery``: publish a prepared job to its task queue and await
its result list with the request's deadline (see ``service.queue`` for the message flow).

Faults map to statuses the client can act on: Redis unreachable -> ``QueueUnavailable``
(HTTP 503 with Retry-After; ``/readyz`` false until Redis answers again, which the next ping
notices by itself), a task queue longer than ``PYTHIA_QUEUE_SIZE`` -> ``QueueFull`` (429).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import redis.asyncio as aredis
from kombu.exceptions import OperationalError

from service.jobs import STORE_ERRORS, RedisJobStore
from service.queue import JOB_QUEUE, TASK_QUEUES, cancel_key, make_celery, result_key
from service.runners import Job
from service.settings import Settings

__all__ = ["REDIS_ERRORS", "CeleryClient", "QueueFull", "QueueUnavailable", "RemoteError"]

# Redis unreachable, as the API meets it: the job store's errors, kombu's, and the socket's.
REDIS_ERRORS: tuple[type[Exception], ...] = (*STORE_ERRORS, OperationalError, ConnectionError,
                                             OSError)


class QueueUnavailable(RuntimeError):
    """Redis (the broker) cannot be reached."""


class QueueFull(RuntimeError):
    """The task queue holds ``PYTHIA_QUEUE_SIZE`` messages already."""


class RemoteError(RuntimeError):
    """A worker answered with an error ``{"status", "code", "message"}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class CeleryClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.celery = make_celery(settings)
        # Every waiting request holds a connection for its BLPOP: redis-py's default pool of
        # 100 would report overload as "Too many connections" (a 503) instead of a 429.
        self.redis = aredis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                           socket_connect_timeout=2,
                                           max_connections=4 * settings.queue_size + 256)
        # kombu publishes synchronously: a few threads keep it off the event loop
        self.publisher = ThreadPoolExecutor(4, thread_name_prefix="publish")
        self._healthy_until = 0.0
        self.last_error = ""
        # Jobs (service.jobs) keep their state in Redis; a small synchronous client for them
        self.jobs = RedisJobStore(redis.Redis.from_url(settings.redis_url, socket_timeout=5,
                                                       socket_connect_timeout=2))

    def submit_job(self, meta: dict[str, Any]) -> None:
        """Store a planned job and queue one ``pythia.job_shard`` task per shard (blocking:
        call it from a thread)."""
        self.jobs.create(meta["job_id"], {**meta, "progress_at": time.time()}, active=True)
        for i in range(int(meta["shards"])):
            self.celery.send_task("pythia.job_shard", args=[meta["job_id"], i],
                                  queue=JOB_QUEUE)

    def reconcile_jobs(self, idle_s: float) -> list[tuple[str, list[int]]]:
        """Queue again the shards of active jobs that no worker will run: not done, no message
        in the queue, none awaiting acknowledgement, and the job idle for ``idle_s``. The Redis
        transport can lose a message when a worker dies between taking it from the list and
        recording it as unacknowledged; shards are idempotent, so a rare duplicate is
        harmless. Blocking (call it from a thread); returns what it queued again."""
        requeued: list[tuple[str, list[int]]] = []
        active = [x.decode() if isinstance(x, bytes) else str(x)
                  for x in self.jobs.r.smembers(self.jobs.ACTIVE)]
        if not active:
            return requeued
        pending = self.jobs.queued_shards(JOB_QUEUE)
        now = time.time()
        for job_id in active:
            meta = self.jobs.get(job_id)
            if meta is None or meta.get("status") in ("done", "failed"):
                self.jobs.r.srem(self.jobs.ACTIVE, job_id)
                continue
            if now - float(meta.get("progress_at") or meta.get("created_at") or now) < idle_s:
                continue
            missing = sorted(set(range(int(meta["shards"]))) - self.jobs.done_shards(job_id)
                             - pending.get(job_id, set()))
            if not missing:
                continue
            self.jobs.update(job_id, progress_at=now,
                             requeued=int(meta.get("requeued") or 0) + len(missing))
            for i in missing:
                self.celery.send_task("pythia.job_shard", args=[job_id, i], queue=JOB_QUEUE)
            requeued.append((job_id, missing))
        return requeued

    async def reachable(self) -> bool:
        """Redis answers a PING (cached for half a second)."""
        now = time.monotonic()
        if now < self._healthy_until:
            return True
        try:
            await asyncio.wait_for(self.redis.ping(), timeout=1.0)
        except REDIS_ERRORS as exc:  # asyncio.TimeoutError is an OSError
            self.last_error = f"Redis at {self._where()} is unreachable ({exc})"
            return False
        self._healthy_until = now + 0.5
        return True

    def _where(self) -> str:
        kw = self.redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    async def admit(self, task: str) -> None:
        """Refuse before any work when Redis is down or the task queue is full."""
        try:
            depth = await asyncio.wait_for(self.redis.llen(TASK_QUEUES[task]), timeout=2.0)
        except REDIS_ERRORS as exc:  # asyncio.TimeoutError is an OSError
            self._healthy_until = 0.0
            raise QueueUnavailable(f"the queue (Redis at {self._where()}) is unreachable: "
                                   f"{exc}") from None
        if int(depth) >= self.settings.queue_size:
            raise QueueFull(f"{depth} requests are waiting in {TASK_QUEUES[task]}")

    async def run(self, task: str, model: str, job: Job, deadline: float,
                  disconnected: asyncio.Future[Any]) -> tuple[dict[str, Any], float]:
        """Publish and wait: (result, seconds from publishing to its batch's start).
        ``deadline`` is ``time.monotonic()``-based; raises ``TimeoutError`` past it."""
        task_id = uuid.uuid4().hex
        remaining = deadline - time.monotonic()
        unix_deadline = time.time() + remaining
        message = job.to_message()
        loop = asyncio.get_running_loop()
        published = time.time()
        try:
            await loop.run_in_executor(self.publisher, lambda: self.celery.send_task(
                f"pythia.{task}", args=[model, message, unix_deadline], task_id=task_id,
                queue=TASK_QUEUES[task], expires=unix_deadline))
        except REDIS_ERRORS as exc:
            self._healthy_until = 0.0
            raise QueueUnavailable(f"publishing to Redis at {self._where()} failed: {exc}"
                                   ) from None
        waiter = asyncio.ensure_future(self._wait(task_id, deadline))
        try:
            done, _ = await asyncio.wait({waiter, disconnected},
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter not in done:
                waiter.cancel()
                await self._cancel(task_id)
                raise ConnectionAbortedError("the client disconnected")
            payload = waiter.result()
        except TimeoutError:
            await self._cancel(task_id)
            raise
        if "error" in payload:
            err = payload["error"]
            raise RemoteError(int(err["status"]), str(err["code"]), str(err["message"]))
        result: dict[str, Any] = payload["result"]
        started = float(result.pop("started_at", published))
        return result, max(0.0, started - published)

    async def _wait(self, task_id: str, deadline: float) -> dict[str, Any]:
        # BLPOP in slices, so a Redis outage surfaces as an error, not a hang
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            try:
                got = await self.redis.blpop([result_key(task_id)],
                                             timeout=max(0.05, min(remaining, 2.0)))
            except REDIS_ERRORS as exc:
                self._healthy_until = 0.0
                raise QueueUnavailable(f"waiting on Redis at {self._where()} failed: {exc}"
                                       ) from None
            if got is not None:
                data: dict[str, Any] = json.loads(got[1])
                return data

    async def _cancel(self, task_id: str) -> None:
        """Tell workers not to start it (best effort: it may be running already)."""
        with contextlib.suppress(*REDIS_ERRORS):
            await self.redis.set(cancel_key(task_id), 1, ex=3600)

    async def close(self) -> None:
        self.publisher.shutdown(wait=False, cancel_futures=True)
        await self.redis.aclose()

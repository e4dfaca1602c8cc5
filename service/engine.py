"""The dynamic batcher: many callers submit one item each, one inference thread runs them in
batches. Plain threads and ``concurrent.futures`` (no asyncio), so the same engine serves the
FastAPI app (which awaits the futures) and a Celery worker (which blocks on them).

Contract::

    batcher = Batcher(predict, max_batch_size=32, max_wait_ms=5, queue_size=256)
    batcher.start()
    ticket = batcher.announce()            # optional: "an item is on its way" (being decoded)
    future = batcher.submit(item, key="vqa", deadline=time.monotonic() + 30, ticket=ticket)
    future.result()                        # predict([... item ...])[i]
    batcher.stop(drain=True)

``predict(items: list) -> list`` is called from the inference thread only, with items of one
``key`` (a task: a batch never mixes tasks), and returns one result per item, in order.

Batch policy (``max_wait_ms`` is an upper bound, never a fixed delay):

* when the inference thread is free it takes what is queued for the oldest item's key, up to
  ``max_batch_size``, and runs it at once if nothing else is on its way;
* "on its way" means announced (``announce``: a request whose image is being decoded) and not
  yet submitted or withdrawn, or counted by ``expected()`` (e.g. HTTP requests in flight)
  beyond what is queued: then it waits for those items, at most ``max_wait_ms`` after the
  later of "the oldest item of the batch was queued" and "the thread became free", or until
  the batch is full;
* requests that arrive while a batch runs queue up and form the next batch.

So one request on an idle engine runs immediately, and under load batches grow by themselves.

Items never run when they are no longer wanted: a cancelled future (the client went away) is
dropped when its batch forms; an item past its deadline gets ``DeadlineExceeded`` instead of
running. A full queue refuses new items with ``Overloaded`` (the HTTP layer answers 429), and a
stopping engine with ``ShuttingDown`` (503). If ``predict`` raises on a batch of several
items, each item is retried alone, so one bad item fails only its own future.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Batcher",
    "BatcherStats",
    "DeadlineExceeded",
    "EngineError",
    "Overloaded",
    "ShuttingDown",
    "Ticket",
]


class EngineError(RuntimeError):
    """Base of the errors the engine sets on futures or raises from ``submit``."""


class Overloaded(EngineError):
    """The queue is full; retry later (HTTP 429 with Retry-After)."""


class ShuttingDown(EngineError):
    """The engine is draining or stopped and takes no new items (HTTP 503)."""


class DeadlineExceeded(EngineError):
    """The item's deadline passed before it could run (HTTP 504)."""


@dataclass
class BatcherStats:
    """Counters since start (read without the lock: each field is a plain int)."""

    submitted: int = 0
    batches: int = 0  # predict() calls on batches (retries of single items not counted)
    items: int = 0  # items that ran
    cancelled: int = 0  # dropped because their future was cancelled before running
    expired: int = 0  # failed with DeadlineExceeded
    rejected: int = 0  # refused by submit (Overloaded)
    failed: int = 0  # items whose predict raised
    batch_sizes: list[int] = field(default_factory=list)  # the last 1000 batch sizes


@dataclass
class _Item:
    item: Any
    key: Hashable
    future: Future[Any]
    deadline: float | None
    queued_at: float


class Ticket:
    """An announced item (see ``Batcher.announce``); give it back through ``submit(ticket=)``
    or ``withdraw``. Using it twice is harmless."""

    __slots__ = ("_batcher", "_open")

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self._batcher._close_ticket()


class Batcher:
    def __init__(
        self,
        predict: Callable[[list[Any]], Sequence[Any]],
        *,
        max_batch_size: int = 32,
        max_wait_ms: float = 5.0,
        queue_size: int = 256,
        name: str = "batcher",
        on_batch: Callable[[Hashable, int, float], None] | None = None,
        expected: Callable[[], int] | None = None,
    ) -> None:
        """``on_batch(key, size, seconds)`` is called after every batch (metrics).
        ``expected()`` (optional) counts requests in the system that may still be submitted
        (e.g. HTTP requests in flight): while it exceeds the queue, a forming batch waits
        for them, within ``max_wait_ms``."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.queue_size = queue_size
        self.name = name
        self.on_batch = on_batch
        self.expected = expected
        self._free_at = 0.0  # time.monotonic() when the inference thread last became free
        self.stats = BatcherStats()
        self._queue: collections.deque[_Item] = collections.deque()
        self._announced = 0
        self._cond = threading.Condition()
        self._accepting = False
        self._running = False
        self._busy = False
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> Batcher:
        with self._cond:
            if self._thread is not None:
                return self
            self._accepting = self._running = True
            self._thread = threading.Thread(target=self._loop, name=f"{self.name}-inference",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Refuse new items; with ``drain`` run what is queued first, else fail it with
        ``ShuttingDown``. Returns when the inference thread has ended (or ``timeout``)."""
        with self._cond:
            self._accepting = False
            if not drain:
                while self._queue:
                    self._fail(self._queue.popleft(), ShuttingDown("the engine stopped"))
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def depth(self) -> int:
        """Items queued (not yet taken into a batch)."""
        return len(self._queue)

    @property
    def busy(self) -> bool:
        return self._busy

    # -- submitting -----------------------------------------------------------------------------
    def announce(self) -> Ticket:
        """Say an item will be submitted soon (its input is being prepared), so a forming
        batch may wait for it (at most ``max_wait_ms``)."""
        with self._cond:
            self._announced += 1
        return Ticket(self)

    def _close_ticket(self) -> None:
        with self._cond:
            self._announced -= 1
            self._cond.notify_all()

    def submit(self, item: Any, *, key: Hashable = None, deadline: float | None = None,
               ticket: Ticket | None = None) -> Future[Any]:
        """Queue ``item``; the future gets ``predict([...item...])``'s result for it, or an
        ``EngineError``. ``deadline`` is a ``time.monotonic()`` instant. Raises ``Overloaded``
        (queue full) or ``ShuttingDown`` (stopping): nothing was queued then."""
        future: Future[Any] = Future()
        try:
            with self._cond:
                if not self._accepting:
                    raise ShuttingDown(f"{self.name} is not accepting requests")
                if len(self._queue) >= self.queue_size:
                    self.stats.rejected += 1
                    raise Overloaded(f"{self.name}: queue full ({self.queue_size} waiting)")
                self._queue.append(_Item(item, key, future, deadline, time.monotonic()))
                self.stats.submitted += 1
                self._cond.notify_all()
        finally:
            if ticket is not None:
                ticket.close()
        return future

    def run(self, item: Any, *, key: Hashable = None, timeout: float | None = None) -> Any:
        """Submit and wait (the blocking form a Celery task uses)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit(item, key=key, deadline=deadline)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"{self.name}: no result within {timeout} s") from None

    # -- the inference thread -------------------------------------------------------------------
    def _take(self) -> list[_Item] | None:
        """The next batch (None when stopped and empty). Called with the lock held."""
        while True:
            while not self._queue:
                if not self._running:
                    return None
                self._cond.wait()
            # The wait is bounded from the later of "the oldest item arrived" and "the
            # thread became free": items that queued during the last batch run at once
            # unless more are on their way.
            start = max(self._queue[0].queued_at, self._free_at)
            while self._running:
                same = sum(1 for it in self._queue if it.key == self._queue[0].key)
                remaining = start + self.max_wait - time.monotonic()
                if same >= self.max_batch_size or remaining <= 0:
                    break
                if self._announced > 0:
                    self._cond.wait(remaining)  # submit/withdraw notify
                elif self.expected is not None and self.expected() > len(self._queue):
                    self._cond.wait(min(remaining, 0.0005))  # a polled count: short slices
                else:
                    break
            key = self._queue[0].key
            batch: list[_Item] = []
            kept: collections.deque[_Item] = collections.deque()
            now = time.monotonic()
            while self._queue:
                it = self._queue.popleft()
                if it.key != key or len(batch) >= self.max_batch_size:
                    kept.append(it)
                elif it.deadline is not None and now >= it.deadline:
                    self.stats.expired += 1
                    self._fail(it, DeadlineExceeded(
                        f"{self.name}: the deadline passed after "
                        f"{(now - it.queued_at) * 1000:.0f} ms in the queue"))
                elif not it.future.set_running_or_notify_cancel():
                    self.stats.cancelled += 1  # the caller went away: drop it
                else:
                    batch.append(it)
            self._queue = kept
            if batch:
                return batch

    @staticmethod
    def _fail(it: _Item, exc: BaseException) -> None:
        if it.future.cancelled():
            return
        if not it.future.running() and not it.future.set_running_or_notify_cancel():
            return
        it.future.set_exception(exc)

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._take()
                if batch is None:
                    return
                self._busy = True
            try:
                self._run(batch)
            finally:
                self._busy = False
                self._free_at = time.monotonic()

    def _run(self, batch: list[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            results = list(self.predict([it.item for it in batch]))
            if len(results) != len(batch):
                raise EngineError(f"predict returned {len(results)} results for "
                                  f"{len(batch)} items")
        except Exception as exc:  # isolate the failing item below
            if len(batch) == 1:
                self.stats.failed += 1
                batch[0].future.set_exception(exc)
                return
            for it in batch:  # one bad item must not fail the others
                try:
                    (result,) = self.predict([it.item])
                except Exception as one:
                    self.stats.failed += 1
                    it.future.set_exception(one)
                else:
                    it.future.set_result(result)
            self._record(batch, t0)
            return
        for it, result in zip(batch, results):
            it.future.set_result(result)
        self._record(batch, t0)

    def _record(self, batch: list[_Item], t0: float) -> None:
        seconds = time.perf_counter() - t0
        self.stats.batches += 1
        self.stats.items += len(batch)
        sizes = self.stats.batch_sizes
        sizes.append(len(batch))
        if len(sizes) > 1000:
            del sizes[:-1000]
        if self.on_batch is not None:
            with contextlib.suppress(Exception):  # metrics must never break inference
                self.on_batch(batch[0].key, len(batch), seconds)

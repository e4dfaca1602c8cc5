"""The batching engine on its own: threads, futures and a predict function that records its
calls (no model, no HTTP)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any

import pytest

from service.engine import Batcher, DeadlineExceeded, Overloaded, ShuttingDown


class Recorder:
    """predict(items) -> [item * 10, ...] after ``delay`` s; blocks while ``gate`` is clear."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.entered.set()
        self.gate.wait(10)
        self.calls.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if any(i == "bad" for i in items):
            raise ValueError("bad item")
        return [i * 10 for i in items]


def _engine(rec: Recorder, **kw: Any) -> Batcher:
    return Batcher(rec, **{"max_batch_size": 8, "max_wait_ms": 5.0, "queue_size": 64, **kw}
                   ).start()


def _blocked(rec: Recorder, engine: Batcher) -> Future[Any]:
    """Occupy the inference thread with item 0 until ``rec.gate`` is set."""
    rec.gate.clear()
    rec.entered.clear()
    f = engine.submit(0)
    assert rec.entered.wait(5)
    return f


def test_concurrent_items_are_batched() -> None:
    rec = Recorder(delay=0.03)
    engine = _engine(rec)
    try:
        futures: list[Future[Any]] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            f = engine.submit(i)
            with lock:
                futures.append(f)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(1, 25)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results = sorted(f.result(5) for f in futures)
        assert results == [i * 10 for i in range(1, 25)]
        assert len(rec.calls) < 24
        assert max(len(c) for c in rec.calls) <= 8
        assert engine.stats.items == 24 and engine.stats.batches == len(rec.calls)
    finally:
        engine.stop()


def test_idle_engine_runs_at_once_whatever_max_wait() -> None:
    rec = Recorder()
    engine = _engine(rec, max_wait_ms=2000)
    try:
        t0 = time.monotonic()
        assert engine.submit(3).result(5) == 30
        assert time.monotonic() - t0 < 0.5
    finally:
        engine.stop()


def test_announced_items_join_the_batch_within_max_wait() -> None:
    rec = Recorder()
    engine = _engine(rec, max_wait_ms=500)
    try:
        ticket = engine.announce()
        first = engine.submit(1)
        time.sleep(0.05)  # the announced item is "being decoded"
        second = engine.submit(2, ticket=ticket)
        assert (first.result(5), second.result(5)) == (10, 20)
        assert rec.calls == [[1, 2]]
    finally:
        engine.stop()


def test_max_wait_is_an_upper_bound() -> None:
    rec = Recorder()
    engine = _engine(rec, max_wait_ms=150)
    try:
        ticket = engine.announce()  # announced, never submitted
        t0 = time.monotonic()
        assert engine.submit(1).result(5) == 10
        waited = time.monotonic() - t0
        assert 0.14 <= waited < 1.0
        ticket.close()
        t0 = time.monotonic()
        assert engine.submit(2).result(5) == 20  # nothing announced: no wait
        assert time.monotonic() - t0 < 0.1
    finally:
        engine.stop()


def test_full_queue_is_refused() -> None:
    rec = Recorder()
    engine = _engine(rec, queue_size=3)
    try:
        held = _blocked(rec, engine)
        queued = [engine.submit(i) for i in (1, 2, 3)]
        with pytest.raises(Overloaded, match="queue full"):
            engine.submit(4)
        assert engine.stats.rejected == 1 and engine.depth == 3
        rec.gate.set()
        assert held.result(5) == 0 and [f.result(5) for f in queued] == [10, 20, 30]
    finally:
        rec.gate.set()
        engine.stop()


def test_deadline_passed_in_queue_never_runs() -> None:
    rec = Recorder()
    engine = _engine(rec)
    try:
        held = _blocked(rec, engine)
        late = engine.submit(7, deadline=time.monotonic() + 0.05)
        ok = engine.submit(8, deadline=time.monotonic() + 30)
        time.sleep(0.1)
        rec.gate.set()
        with pytest.raises(DeadlineExceeded):
            late.result(5)
        assert ok.result(5) == 80 and held.result(5) == 0
        assert all(7 not in c for c in rec.calls) and engine.stats.expired == 1
    finally:
        rec.gate.set()
        engine.stop()


def test_cancelled_item_is_dropped() -> None:
    rec = Recorder()
    engine = _engine(rec)
    try:
        held = _blocked(rec, engine)
        gone = engine.submit(5)
        kept = engine.submit(6)
        assert gone.cancel()
        rec.gate.set()
        assert kept.result(5) == 60 and held.result(5) == 0
        assert all(5 not in c for c in rec.calls) and engine.stats.cancelled == 1
    finally:
        rec.gate.set()
        engine.stop()


def test_a_bad_item_fails_alone() -> None:
    rec = Recorder()
    engine = _engine(rec)
    try:
        held = _blocked(rec, engine)
        futures = [engine.submit(x) for x in (1, "bad", 2)]
        rec.gate.set()
        held.result(5)
        assert futures[0].result(5) == 10 and futures[2].result(5) == 20
        with pytest.raises(ValueError, match="bad item"):
            futures[1].result(5)
        assert engine.stats.failed == 1
    finally:
        rec.gate.set()
        engine.stop()


def test_keys_are_never_mixed() -> None:
    rec = Recorder()
    engine = _engine(rec)
    try:
        held = _blocked(rec, engine)
        futures = [engine.submit(i, key="vqa" if i % 2 else "caption") for i in range(1, 7)]
        rec.gate.set()
        held.result(5)
        assert [f.result(5) for f in futures] == [10, 20, 30, 40, 50, 60]
        assert sorted(map(sorted, rec.calls[1:])) == [[1, 3, 5], [2, 4, 6]]
    finally:
        rec.gate.set()
        engine.stop()


def test_stop_drains_then_refuses() -> None:
    rec = Recorder(delay=0.02)
    engine = _engine(rec, max_batch_size=2)
    held = _blocked(rec, engine)
    queued = [engine.submit(i) for i in (1, 2, 3, 4, 5)]
    stopper = threading.Thread(target=engine.stop)
    rec.gate.set()
    stopper.start()
    stopper.join(5)
    assert not engine.alive
    assert held.result(0) == 0 and [f.result(0) for f in queued] == [10, 20, 30, 40, 50]
    with pytest.raises(ShuttingDown):
        engine.submit(9)


def test_stop_without_drain_fails_the_queue() -> None:
    rec = Recorder()
    engine = _engine(rec)
    held = _blocked(rec, engine)
    queued = engine.submit(1)
    threading.Timer(0.05, rec.gate.set).start()
    engine.stop(drain=False)
    assert held.result(5) == 0
    with pytest.raises(ShuttingDown):
        queued.result(5)


def test_blocking_run_with_timeout() -> None:
    rec = Recorder()
    engine = _engine(rec)
    try:
        assert engine.run(4, timeout=5) == 40
        _blocked(rec, engine)
        with pytest.raises(DeadlineExceeded):
            engine.run(5, timeout=0.05)
    finally:
        rec.gate.set()
        engine.stop()


def test_expected_requests_join_within_the_bound() -> None:
    rec = Recorder()
    in_flight = [2]
    engine = _engine(rec, max_wait_ms=300, expected=lambda: in_flight[0])
    try:
        first = engine.submit(1)
        time.sleep(0.05)  # the second request is still "in flight" (being parsed)
        second = engine.submit(2)
        assert (first.result(5), second.result(5)) == (10, 20)
        assert rec.calls == [[1, 2]]
        in_flight[0] = 5  # more expected than will ever come: bounded by max_wait
        t0 = time.monotonic()
        assert engine.submit(3).result(5) == 30
        assert 0.25 <= time.monotonic() - t0 < 1.5
        in_flight[0] = 1  # only this one: no wait at all
        t0 = time.monotonic()
        assert engine.submit(4).result(5) == 40
        assert time.monotonic() - t0 < 0.1
    finally:
        engine.stop()

"""Overload benchmark: does the HTTP service shed load (429) and keep the latency of the requests
it accepts bounded and its memory flat when offered more than it can serve? A bounded,
self-stopping load test on loopback, in local mode and in Celery mode. Prints one JSON object
on stdout (progress goes to stderr). A benchmark run by hand, not part of CI.

    .venv/bin/python bench/load.py                       # full run: both modes, 60 s per rate
    .venv/bin/python bench/load.py --seconds 8           # a quick look
    .venv/bin/python bench/load.py [--seconds 60] [--modes local,celery]
        [--rate-multipliers 1,2] [--model RELEASE_DIR] [--out FILE]
        [--calibrate-seconds 10] [--concurrency 32] [--queue-size 64] [--request-timeout 10]
        [--arrivals poisson|fixed] [--max-outstanding 512] [--rss-bound-mib 100]
        [--p99-factor 10] [--max-batch-size 32] [--max-wait-ms 5] [--torch-threads 1]
        [--worker-concurrency 32] [--seed 0]

A full default run takes about 6 minutes (per mode: the stack's start, 2 s warm-up, 10 s
calibration, 2 x 60 s open loop, idle waits). Take final figures on a quiet machine: the
service, the worker, Redis and this client share the machine's cores.

Per mode (``--modes``): the stack is started with ``bench/serve.py``'s helpers
(``pythia_server``: ``python -m service --model bench=RELEASE``; ``celery_stack``: a private
``redis-server``, one worker ``celery -A service.worker worker --pool threads --concurrency
--worker-concurrency`` and the API with ``PYTHIA_QUEUE=celery``), with
``PYTHIA_QUEUE_SIZE=--queue-size`` (default 64) and ``PYTHIA_REQUEST_TIMEOUT_S=
--request-timeout`` (default 10), so that overload must be shed with 429 (or 504). The
request: ``bench/serve.py``'s fixed multipart body (a ShapesWorld VQA v2 val JPEG, its
question, ``top_k=5``) POSTed to ``/vqa``. The model: ``--model RELEASE_DIR``, else the bench
demo model in ``runs/bench_demo`` (trained there if missing, as ``bench/serve.py`` does).

The client: one asyncio event loop in this process speaking HTTP/1.1 keep-alive over raw
asyncio streams (cheaper per request than an HTTP library, so that the client takes little of
the cores it shares with the service), at most ``--max-outstanding`` connections/requests.

1. ``warmup``: 2 s closed loop at ``--concurrency``, discarded.
2. ``calibrate``: closed loop (every one of ``--concurrency`` (32) clients sends its next
   request when the previous answer came) for ``--calibrate-seconds``; R = its accepted
   requests/s, the sustainable rate.
3. ``open_<m>x`` for each ``--rate-multipliers`` m (default 1 and 2): open loop at m x R
   requests/s for ``--seconds``: arrivals on a schedule (Poisson, seeded; ``--arrivals fixed``:
   a fixed interval) whatever the answers; a request whose slot finds ``--max-outstanding``
   requests outstanding is not sent (``not_sent_cap``: the client stayed bounded; should be 0).
   Latency is counted from the scheduled send time (no coordinated omission). Before each run
   the service is left to go idle (queue depth 0).

Per run: ``offered_rps`` (open loop: the target rate; ``sent``/``sent_rps`` what was sent),
``rps`` (accepted, i.e. 200 answers per second of the run), ``p50_ms``/``p95_ms``/``p99_ms``/
``mean_ms``/``max_ms`` (latency of the 200 answers), ``status`` (counts: ``200``, ``429``,
``503``, ``504``, ``other`` (any other HTTP status), ``client_error`` (connection reset,
malformed answer, client-side timeout at request timeout + 20 s), ``not_sent_cap``),
``client_errors`` (their kinds), ``stale_retries`` (kept-alive
connections the server had closed, retried once on a new one: not errors),
``error_examples`` (the first answer body per status other than 200
and 429), ``rejected_p50_ms`` (how fast the 429s came), ``client_lag_ms_max`` (how late this client
launched a request against the schedule: large means the client, not the service, was the
bottleneck), ``queue_depth`` (``max``, ``mean`` and ``series`` [[t_s, depth], ...] sampled
every 0.5 s: local mode ``pythia_queue_depth{model="bench"}`` from ``/metrics``, Celery mode
Redis ``LLEN pythia.vqa`` (the messages no worker has taken yet; the worker also holds up to
its prefetch)), ``rss_mib`` per process (``api``, ``worker`` (with its children), ``redis``):
``start``, ``end``, ``peak`` (``/proc/<pid>/status`` VmRSS summed over the process and its
descendants, sampled every 0.5 s).

Per mode ``rss_mib`` start (after the warm-up) / end (after the last run, the service idle)
/ peak over the whole mode, and ``checks`` (each ``value``, ``bound``, ``ok``):

* ``sheds_at_<m>x`` (for the highest multiplier, if >= 2): 429 count > 0.
* ``p99_bounded_at_<m>x``: the p99 of the accepted requests at the highest multiplier
  <= min(request timeout, max(``--p99-factor`` (10) x the p50 at the lowest multiplier,
  2 x (queue size + max batch size) / R)). The second term: an overloaded service holds a
  full queue, so an accepted request waits for up to ``queue size + max batch size`` requests
  served at R; the p50 at 1x R is that of a mostly empty queue (on a 2-core machine 10 x it
  was below that wait), so 10 x p50 alone would fail a service that sheds correctly.
* ``memory_flat_<proc>``: RSS end - start <= ``--rss-bound-mib`` (100 MiB) for the API and
  the worker.

``ok`` at the top: every check of every mode passed (the exit status is 1 otherwise). Every
process this starts is stopped in ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serve import (  # noqa: E402
    CeleryStack,
    Server,
    _parse_modes,
    celery_stack,
    find_sample,
    model_release,
    multipart_body,
    pythia_server,
)

MODEL_NAME = "bench"  # the name bench/serve.py's helpers serve the release under
CELERY_QUEUE = "pythia.vqa"
SAMPLE_EVERY_S = 0.5


def log(msg: str) -> None:
    print(f"[bench/load] {msg}", file=sys.stderr, flush=True)


# -- the client -----------------------------------------------------------------------------------
class HttpPool:
    """HTTP/1.1 keep-alive over asyncio streams: one fixed request, at most ``limit``
    connections (the caller bounds the outstanding requests to the same number)."""

    def __init__(self, port: int, request: bytes, limit: int, timeout: float) -> None:
        self.port, self.request, self.limit, self.timeout = port, request, limit, timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.errors: Counter[str] = Counter()
        self.stale_retries = 0
        self.examples: dict[int, str] = {}  # the first body per status other than 200/429

    async def post(self) -> int:
        """One request; its HTTP status, or -1 for a client error (``errors`` names it). A
        kept-alive connection the server closed meanwhile (nothing read back) is retried once
        on a new connection, as HTTP clients do."""
        status, stale = await self._post(reuse=True)
        if stale:
            status, _ = await self._post(reuse=False)
        return status

    async def _post(self, reuse: bool) -> tuple[int, bool]:
        conn = self.idle.pop() if reuse and self.idle else None
        reused = conn is not None
        if conn is None:
            self.open += 1
            try:
                conn = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", self.port), self.timeout)
            except (OSError, TimeoutError) as exc:
                self.open -= 1
                self.errors[f"connect: {type(exc).__name__}"] += 1
                return -1, False
        reader, writer = conn
        try:
            status, keep = await asyncio.wait_for(self._exchange(reader, writer), self.timeout)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            status, keep = -1, False
            self.open -= 1
            writer.close()
            if reused and (isinstance(exc, ConnectionError) or (
                    isinstance(exc, asyncio.IncompleteReadError) and not exc.partial)):
                self.stale_retries += 1
                return -1, True
            self.errors[type(exc).__name__] += 1
            return -1, False
        if keep:
            self.idle.append(conn)
        else:
            self.open -= 1
            writer.close()
        return status, False

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                        ) -> tuple[int, bool]:
        writer.write(self.request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            data = await reader.readexactly(int(headers["content-length"]))
            if status not in (200, 429) and status not in self.examples:
                self.examples[status] = data[:300].decode(errors="replace")
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            await reader.read()
            return status, False
        return status, headers.get("connection", "").lower() != "close"

    def reset_errors(self) -> None:
        self.errors.clear()
        self.stale_retries = 0
        self.examples.clear()

    def error_report(self) -> dict[str, Any]:
        return {"client_errors": dict(self.errors), "stale_retries": self.stale_retries,
                "error_examples": {str(k): v for k, v in sorted(self.examples.items())}}

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Tally:
    latencies_ms: list[float] = field(default_factory=list)  # 200 answers
    rejected_ms: list[float] = field(default_factory=list)  # 429 answers
    status: Counter[str] = field(default_factory=Counter)

    def add(self, status: int, ms: float) -> None:
        if status == 200:
            self.latencies_ms.append(ms)
        elif status == 429:
            self.rejected_ms.append(ms)
        key = {200: "200", 429: "429", 503: "503", 504: "504", -1: "client_error"}.get(
            status, "other")
        self.status[key] += 1


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))], 1)


def summarise(tally: Tally, seconds: float) -> dict[str, Any]:
    lat = tally.latencies_ms
    status = {k: tally.status.get(k, 0) for k in
              ("200", "429", "503", "504", "other", "client_error", "not_sent_cap")}
    return {"rps": round(len(lat) / seconds, 1), "p50_ms": _pct(lat, 50),
            "p95_ms": _pct(lat, 95), "p99_ms": _pct(lat, 99),
            "mean_ms": round(statistics.fmean(lat), 1) if lat else None,
            "max_ms": round(max(lat), 1) if lat else None, "status": status,
            "rejected_p50_ms": _pct(tally.rejected_ms, 50)}


async def closed_loop(pool: HttpPool, concurrency: int, seconds: float) -> Tally:
    tally = Tally()
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            status = await pool.post()
            tally.add(status, (time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return tally


async def open_loop(pool: HttpPool, rate: float, seconds: float, max_outstanding: int,
                    poisson: bool, rng: random.Random) -> tuple[Tally, int, float]:
    """Requests launched at ``rate``/s on schedule for ``seconds``; (tally, sent, max lag ms)."""
    tally = Tally()
    tasks: set[asyncio.Task[None]] = set()
    sent, lag_max = 0, 0.0
    loop = asyncio.get_running_loop()

    async def one(scheduled: float) -> None:
        status = await pool.post()
        tally.add(status, (time.perf_counter() - scheduled) * 1000)

    start = time.perf_counter()
    end = start + seconds
    t = start
    while True:
        t += rng.expovariate(rate) if poisson else 1.0 / rate
        if t >= end:
            break
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag_max = max(lag_max, time.perf_counter() - t)
        if len(tasks) >= max_outstanding:
            tally.status["not_sent_cap"] += 1
            continue
        task = loop.create_task(one(t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        sent += 1
    if tasks:
        await asyncio.gather(*tasks)
    return tally, sent, lag_max * 1000


# -- sampling -------------------------------------------------------------------------------------
def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` and its descendants, MiB."""
    return round(sum(_rss_kib(p) for p in _descendants(pid)) / 1024, 1)


class Sampler(threading.Thread):
    """Every 0.5 s: the RSS of each watched process (with its children) and the queue depth
    (``depth()``); ``mark()`` starts a new window (a run) and returns the previous one."""

    def __init__(self, pids: dict[str, int], depth: Any) -> None:
        super().__init__(daemon=True, name="sampler")
        self.pids, self.depth = pids, depth
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.peak_all: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._reset()

    def _reset(self) -> None:
        self.t0 = time.perf_counter()
        self.series: list[list[float]] = []
        self.peak: dict[str, float] = dict.fromkeys(self.pids, 0.0)

    def sample_once(self) -> None:
        rss = {name: rss_mib(pid) for name, pid in self.pids.items()}
        try:
            depth: float | None = float(self.depth())
        except Exception:  # a missed sample (server busy): skip it
            depth = None
        with self.lock:
            for name, v in rss.items():
                self.peak[name] = max(self.peak[name], v)
                self.peak_all[name] = max(self.peak_all[name], v)
            if depth is not None:
                self.series.append([round(time.perf_counter() - self.t0, 1), depth])

    def run(self) -> None:
        while not self.stop_event.is_set():
            t = time.perf_counter()
            self.sample_once()
            self.stop_event.wait(max(0.0, SAMPLE_EVERY_S - (time.perf_counter() - t)))

    def mark(self) -> dict[str, Any]:
        with self.lock:
            series, peak = self.series, self.peak
            self._reset()
        depths = [d for _, d in series]
        return {"queue_depth": {"max": max(depths) if depths else None,
                                "mean": round(statistics.fmean(depths), 1) if depths else None,
                                "series": series},
                "peak": peak}

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def metrics_depth(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("pythia_queue_depth{") and f'model="{MODEL_NAME}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise ValueError("no pythia_queue_depth in /metrics")


def wait_idle(depth: Any, timeout: float = 60.0) -> float:
    """Wait until the queue depth reads 0 twice in a row; seconds waited."""
    t0 = time.perf_counter()
    zeros = 0
    while time.perf_counter() - t0 < timeout:
        with contextlib.suppress(Exception):
            zeros = zeros + 1 if float(depth()) == 0 else 0
        if zeros >= 2:
            break
        time.sleep(0.25)
    time.sleep(0.5)
    return round(time.perf_counter() - t0, 1)


# -- one mode -------------------------------------------------------------------------------------
def run_mode(mode: str, server: Server, body: bytes, ctype: str, args: argparse.Namespace
             ) -> dict[str, Any]:
    if isinstance(server, CeleryStack):
        import redis

        pids = {name: server.procs[name].pid for name in ("api", "worker", "redis")}
        rclient = redis.Redis.from_url(server.env["PYTHIA_REDIS_URL"], socket_timeout=2)

        def depth() -> float:
            return float(rclient.llen(CELERY_QUEUE))
        depth_source = f"redis LLEN {CELERY_QUEUE}"
    else:
        assert server.proc is not None
        pids = {"api": server.proc.pid}

        def depth() -> float:
            return metrics_depth(server.url)
        depth_source = f'/metrics pythia_queue_depth{{model="{MODEL_NAME}"}}'

    request = (f"POST /vqa HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
               f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
               f"Connection: keep-alive\r\n\r\n").encode() + body
    client_timeout = args.request_timeout + 20.0
    out: dict[str, Any] = {"startup_s": server.started_s, "pids": pids,
                           "queue_depth_source": depth_source, "runs": {}}
    sampler = Sampler(pids, depth)
    rng = random.Random(args.seed)

    async def go() -> None:
        pool = HttpPool(server.port, request, args.max_outstanding, client_timeout)
        try:
            log(f"{mode}: warm-up 2 s closed loop at concurrency {args.concurrency}")
            await closed_loop(pool, args.concurrency, 2.0)
            await asyncio.to_thread(wait_idle, depth)
            out["rss_mib"] = {"start": {n: rss_mib(p) for n, p in pids.items()}}
            sampler.start()
            sampler.mark()
            log(f"{mode}: calibrating: {args.calibrate_seconds} s closed loop at "
                f"concurrency {args.concurrency}")
            pool.reset_errors()
            t0 = time.perf_counter()
            tally = await closed_loop(pool, args.concurrency, args.calibrate_seconds)
            run = {"kind": "closed", "concurrency": args.concurrency,
                   **summarise(tally, time.perf_counter() - t0), **pool.error_report()}
            window = sampler.mark()
            run["queue_depth"] = window["queue_depth"]
            run["rss_mib_peak"] = window["peak"]
            out["runs"]["calibrate"] = run
            rate = run["rps"]
            out["sustainable_rps"] = rate
            log(f"{mode}: R = {rate} requests/s (p50 {run['p50_ms']} ms)")
            if rate <= 0:
                raise RuntimeError(f"{mode}: nothing answered 200 in the calibration: "
                                   f"{run['status']}")
            for m in args.rate_multipliers:
                waited = await asyncio.to_thread(wait_idle, depth)
                rss_start = {n: rss_mib(p) for n, p in pids.items()}
                sampler.mark()
                pool.reset_errors()
                target = rate * m
                log(f"{mode}: open loop at {m:g} x R = {target:.1f} requests/s for "
                    f"{args.seconds} s")
                t0 = time.perf_counter()
                tally, sent, lag = await open_loop(pool, target, args.seconds,
                                                   args.max_outstanding,
                                                   args.arrivals == "poisson", rng)
                elapsed = time.perf_counter() - t0
                window = sampler.mark()
                summary = summarise(tally, args.seconds)
                run = {"kind": "open", "multiplier": m, "offered_rps": round(target, 1),
                       "sent": sent, "sent_rps": round(sent / args.seconds, 1),
                       **summary, **pool.error_report(),
                       "client_lag_ms_max": round(lag, 1),
                       "seconds_with_drain": round(elapsed, 1), "idle_wait_s": waited,
                       "queue_depth": window["queue_depth"],
                       "rss_mib": {n: {"start": rss_start[n], "end": rss_mib(p),
                                       "peak": window["peak"][n]} for n, p in pids.items()}}
                out["runs"][f"open_{m:g}x"] = run
                log(f"{mode}: {m:g}x: {summary['rps']} accepted/s, p99 {summary['p99_ms']} "
                    f"ms, status {summary['status']}")
            await asyncio.to_thread(wait_idle, depth)
        finally:
            await pool.close()

    try:
        asyncio.run(go())
        out["rss_mib"]["end"] = {n: rss_mib(p) for n, p in pids.items()}
        out["rss_mib"]["peak"] = dict(sampler.peak_all)
    finally:
        if sampler.is_alive():
            sampler.stop()
    out["checks"] = checks(out, args)
    return out


def checks(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {}
    mults = sorted(args.rate_multipliers)
    lo, hi = out["runs"].get(f"open_{mults[0]:g}x"), out["runs"].get(f"open_{mults[-1]:g}x")
    if hi is not None and mults[-1] >= 2:
        result[f"sheds_at_{mults[-1]:g}x"] = {"value": hi["status"]["429"], "bound": "> 0",
                                              "ok": hi["status"]["429"] > 0}
    if hi is not None and lo is not None and len(mults) > 1:
        # bounded: below the request timeout and below the larger of p99_factor x the p50 at
        # the lowest rate and twice the time the service needs to work off a full queue plus
        # one batch at the sustainable rate ((queue size + max batch size) / R)
        timeout_ms = args.request_timeout * 1000
        drain_ms = (args.queue_size + args.max_batch_size) / out["sustainable_rps"] * 1000
        p50_ms = lo["p50_ms"] if lo["p50_ms"] is not None else math.inf
        bound = min(timeout_ms, max(args.p99_factor * p50_ms, 2 * drain_ms))
        how = (f"<= min(request timeout {timeout_ms:g} ms, max({args.p99_factor:g} x p50 at "
               f"{mults[0]:g}x = {args.p99_factor * p50_ms:.1f} ms, 2 x (queue size + max "
               f"batch size) / R = {2 * drain_ms:.1f} ms))")
        p99 = hi["p99_ms"]
        result[f"p99_bounded_at_{mults[-1]:g}x"] = {
            "value": p99, "bound": how, "bound_ms": round(bound, 1),
            "ok": p99 is not None and p99 <= bound}
    for name in ("api", "worker"):
        if name in out["rss_mib"]["start"]:
            growth = round(out["rss_mib"]["end"][name] - out["rss_mib"]["start"][name], 1)
            result[f"memory_flat_{name}"] = {
                "value": growth, "bound": f"end - start <= {args.rss_bound_mib:g} MiB",
                "ok": growth <= args.rss_bound_mib}
    return result


# -- main -----------------------------------------------------------------------------------------
def _parse_mults(text: str) -> list[float]:
    try:
        mults = [float(m) for m in text.split(",") if m.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("--rate-multipliers: numbers, e.g. 1,2") from None
    if not mults or min(mults) <= 0:
        raise argparse.ArgumentTypeError("--rate-multipliers: positive numbers, e.g. 1,2")
    return mults


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per open-loop run")
    ap.add_argument("--modes", type=_parse_modes, default=["local", "celery"],
                    metavar="local,celery")
    ap.add_argument("--rate-multipliers", type=_parse_mults, default=[1.0, 2.0],
                    metavar="1,2", help="open-loop rates as multiples of the sustainable R")
    ap.add_argument("--model", type=Path, default=None, metavar="RELEASE_DIR",
                    help="the release to serve (default: the bench demo model)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--calibrate-seconds", type=float, default=10.0)
    ap.add_argument("--concurrency", type=int, default=32,
                    help="the calibration's closed-loop concurrency")
    ap.add_argument("--queue-size", type=int, default=64, help="PYTHIA_QUEUE_SIZE")
    ap.add_argument("--request-timeout", type=float, default=10.0,
                    help="PYTHIA_REQUEST_TIMEOUT_S")
    ap.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    ap.add_argument("--max-outstanding", type=int, default=512,
                    help="cap on the client's outstanding requests (and connections)")
    ap.add_argument("--rss-bound-mib", type=float, default=100.0)
    ap.add_argument("--p99-factor", type=float, default=10.0)
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--torch-threads", type=int, default=1)
    ap.add_argument("--worker-concurrency", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--demo-run-dir", type=Path, default=ROOT / "runs" / "bench_demo")
    ap.add_argument("--demo-updates", type=int, default=20)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "shapes")
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    result: dict[str, Any] = {
        "note": "measured on whatever else runs on this machine: take final figures on a "
                "quiet machine",
        "machine": {"cpus": os.cpu_count(),
                    "load_avg_start": [round(v, 2) for v in os.getloadavg()]},
        "config": {"seconds": args.seconds, "calibrate_seconds": args.calibrate_seconds,
                   "concurrency": args.concurrency, "rate_multipliers": args.rate_multipliers,
                   "queue_size": args.queue_size, "request_timeout_s": args.request_timeout,
                   "arrivals": args.arrivals, "max_outstanding": args.max_outstanding,
                   "max_batch_size": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                   "torch_threads": args.torch_threads,
                   "worker_concurrency": args.worker_concurrency, "seed": args.seed},
    }
    status = 0
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        scratch = Path(tmp)
        release, data_dir = model_release(args)
        result["config"]["model"] = str(release)
        sample = find_sample(data_dir, scratch)
        body, ctype = multipart_body(sample)
        result["request"] = {"image": sample.path, "question": sample.question,
                             "body_bytes": len(body)}
        common = {"max_batch": args.max_batch_size, "max_wait_ms": args.max_wait_ms,
                  "threads": args.torch_threads, "decode_threads": None, "scratch": scratch}
        limits = {"PYTHIA_QUEUE_SIZE": str(args.queue_size),
                  "PYTHIA_REQUEST_TIMEOUT_S": f"{args.request_timeout:g}"}
        for mode in args.modes:
            server: Server
            if mode == "celery":
                redis_server = shutil.which("redis-server")
                if redis_server is None:
                    result[mode] = {"skipped": "redis-server is not installed "
                                               "(apt-get install -y redis-server)"}
                    status = 1
                    continue
                stack = celery_stack(release, worker_concurrency=args.worker_concurrency,
                                     redis_server=redis_server, label="load", **common)
                stack.worker_env.update(limits)
                stack.extra["check_body"] = (body, ctype)
                server = stack
            else:
                server = pythia_server(release, label="load", **common)
            server.env.update(limits)
            log(f"{mode}: starting {server.name}")
            try:
                server.start()
                result[mode] = run_mode(mode, server, body, ctype, args)
            except Exception as exc:
                log(f"{mode}: failed: {exc!r}\n{server.log_tail()}")
                result[mode] = {"error": repr(exc), "log_tail": server.log_tail()}
                status = 1
            finally:
                log(f"{mode}: stopping")
                server.stop()
    oks = [c["ok"] for mode in args.modes for c in result.get(mode, {}).get("checks", {})
           .values()]
    result["ok"] = bool(oks) and all(oks) and status == 0
    result["machine"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    return result, 0 if result["ok"] else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        result, status = run(args)
    # one line per [t, depth] pair instead of four
    text = re.sub(r"\[\s+(-?[\d.]+),\s+(-?[\d.]+)\s+\]", r"[\1, \2]",
                  json.dumps(result, indent=2))
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return status


if __name__ == "__main__":
    raise SystemExit(main())

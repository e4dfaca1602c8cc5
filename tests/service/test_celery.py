"""PYTHIA_QUEUE=celery with the real parts: a redis-server of the test's own (so it can be
stopped and restarted), real ``celery -A service.worker worker`` processes, and the API over
real HTTP. Answers must equal the in-process service's."""

from __future__ import annotations

import base64
import collections
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.runners import LoadedModel, load_model
from tests.service.conftest import LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None,
                                reason="needs redis-server (Debian's redis)")


class RedisServer:
    """A private redis-server on a free port; ``command`` is what runs before the port, bind
    and dir arguments (default: no persistence)."""

    def __init__(self, tmp: Path, command: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.tmp = tmp
        self.command = command or ["redis-server", "--save", "", "--appendonly", "no"]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [*self.command, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return self
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


# The last lines each worker wrote to stderr, by pid: failure messages show them.
WORKER_LOGS: dict[int, collections.deque[str]] = {}


#: ``python -c`` launcher for ``celery`` whose workers wait ``ACK_DELAY_S`` before each
#: acknowledgement: it widens, not fakes, the window in which Redis can vanish between a
#: task's end and its ack (``task_acks_late``), which CI hit by chance.
SLOW_ACK_CELERY = """
import os, time
import kombu.message
_ack = kombu.message.Message.ack
def ack(self, *args, **kwargs):
    time.sleep(float(os.environ["ACK_DELAY_S"]))
    return _ack(self, *args, **kwargs)
kombu.message.Message.ack = ack
from celery.__main__ import main
main()
"""


def start_worker(release: Path, redis_url: str, *, concurrency: int = 8,
                 extra_env: dict[str, str] | None = None,
                 ack_delay_s: float = 0.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHIA_MODELS": f"demo={release}",
           "PYTHIA_REDIS_URL": redis_url, "PYTHIA_DEVICE": "cpu", "PYTHIA_MAX_WAIT_MS": "50",
           "PYTHIA_MAX_BATCH_SIZE": str(concurrency), "OMP_NUM_THREADS": "1",
           **(extra_env or {})}
    if ack_delay_s:
        env["ACK_DELAY_S"] = str(ack_delay_s)
    launcher = ["-c", SLOW_ACK_CELERY] if ack_delay_s else ["-m", "celery"]
    proc = subprocess.Popen(
        [sys.executable, *launcher, "-A", "service.worker", "worker", "--pool", "threads",
         "--concurrency", str(concurrency), "--loglevel", "info", "--without-gossip",
         "--without-mingle", "--without-heartbeat", "-n", f"w{free_port()}@%h"],
        cwd=REPO, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if " ready." in line:
            tail = WORKER_LOGS.setdefault(proc.pid, collections.deque(lines, maxlen=200))
            threading.Thread(target=tail.extend, args=(proc.stderr,),  # drain, keep
                             daemon=True).start()
            return proc
    proc.kill()
    raise RuntimeError("the worker did not start:\n" + "".join(lines[-30:]))


def stop_worker(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def worker(demo_release: Path, redis_server: RedisServer) -> Iterator[subprocess.Popen[str]]:
    proc = start_worker(demo_release, redis_server.url)
    yield proc
    stop_worker(proc)


@pytest.fixture(scope="module")
def front(demo_release: Path) -> LoadedModel:
    return load_model("demo", demo_release, weights=False)


def _vqa(c: httpx.Client, url: str, image: bytes, question: str, **extra: str
         ) -> httpx.Response:
    return c.post(f"{url}/vqa", files={"image": ("a.jpg", image)},
                  data={"question": question, **extra})


def test_requests_through_a_worker_equal_local(
        serve: Callable[..., LiveServer], front: LoadedModel, worker: Any,
        redis_server: RedisServer, image_bytes: bytes) -> None:
    remote = serve(models={"demo": front}, queue="celery", redis_url=redis_server.url)
    local = serve()
    b64 = base64.b64encode(image_bytes).decode()
    calls: list[tuple[str, dict[str, Any]]] = [
        ("vqa", {"image": b64, "question": "what color is the circle?", "top_k": 3}),
        ("vqa", {"image": b64, "question": "how many shapes?", "dataset": "vizwiz"}),
        ("caption", {"image": b64, "beam_size": 3}),
        ("dialog", {"image": b64, "question": "is it red?", "caption": "a red circle",
                    "history": [{"question": "is there a circle?", "answer": "yes"}],
                    "options": ["yes", "no", "red", "two"]}),
        ("textvqa", {"image": b64, "question": "what is written?",
                     "ocr_tokens": [{"word": "zorblat", "box": [0.1, 0.1, 0.3, 0.2]}]}),
    ]
    with httpx.Client(timeout=60) as c:
        for route, body in calls:
            a = c.post(f"{remote.url}/{route}", json=body)
            b = c.post(f"{local.url}/{route}", json=body)
            assert a.status_code == 200 and b.status_code == 200, (route, a.text, b.text)
            ja, jb = a.json(), b.json()
            ja.pop("timing_ms"), jb.pop("timing_ms")
            assert ja == jb, route
        ready = c.get(f"{remote.url}/readyz").json()
        assert ready["queue"] == "celery"
        assert c.get(f"{remote.url}/models").json()["models"][0]["device"] == "workers"
        # errors travel back as errors
        r = c.post(f"{remote.url}/dialog", json={"image": b64, "question": "what?"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "options_required"


def test_concurrent_requests_batch_in_one_worker(
        serve: Callable[..., LiveServer], front: LoadedModel, worker: Any,
        redis_server: RedisServer, image_bytes: bytes) -> None:
    remote = serve(models={"demo": front}, queue="celery", redis_url=redis_server.url)
    sizes: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        with httpx.Client(timeout=60) as c:
            r = _vqa(c, remote.url, image_bytes, f"how many circles {i}?")
        assert r.status_code == 200, r.text
        with lock:
            sizes.append(r.json()["timing_ms"]["batch_size"])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(sizes) == 16 and max(sizes) > 1


def test_full_queue_and_deadline_without_workers(
        serve: Callable[..., LiveServer], front: LoadedModel, tmp_path: Path,
        image_bytes: bytes) -> None:
    # A Redis of its own with no worker listening: messages pile up in the task queue.
    lonely = RedisServer(tmp_path).start()
    try:
        remote = serve(models={"demo": front}, queue="celery", redis_url=lonely.url,
                       queue_size=2, request_timeout_s=1.0)
        with httpx.Client(timeout=30) as c:
            first = [_vqa(c, remote.url, image_bytes, f"q{i}?") for i in range(2)]
            assert [r.status_code for r in first] == [504, 504]
            r = _vqa(c, remote.url, image_bytes, "q3?")
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "overloaded"
    finally:
        lonely.stop()


def _worker_log(proc: subprocess.Popen[str]) -> str:
    return "".join(WORKER_LOGS.get(proc.pid, []))


@pytest.mark.parametrize("ack_delay_s", [0.0, 0.3], ids=["acked", "ack_lost"])
def test_redis_outage_503_then_recovery(
        serve: Callable[..., LiveServer], front: LoadedModel, demo_release: Path,
        tmp_path: Path, image_bytes: bytes, ack_delay_s: float) -> None:
    # ack_lost: Redis stops after the worker answered "before?" but before it acknowledged
    # the message; kombu's channel close then raised AttributeError and the worker exited
    # ("Unrecoverable error") instead of reconnecting, until service.queue.RedisTransport.
    own = RedisServer(tmp_path).start()
    proc = start_worker(demo_release, own.url, concurrency=2, ack_delay_s=ack_delay_s)
    try:
        remote = serve(models={"demo": front}, queue="celery", redis_url=own.url,
                       request_timeout_s=20)
        with httpx.Client(timeout=60) as c:
            assert _vqa(c, remote.url, image_bytes, "before?").status_code == 200
            own.stop()
            r = _vqa(c, remote.url, image_bytes, "during?")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_unavailable"
            ready = c.get(f"{remote.url}/readyz")
            assert ready.status_code == 503 and "unreachable" in ready.json()["error"]["message"]
            if ack_delay_s:
                deadline = time.monotonic() + 10
                while "Couldn't ack" not in _worker_log(proc) and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert "Couldn't ack" in _worker_log(proc), _worker_log(proc)
                time.sleep(0.5)  # the consumer notices the lost connection and closes
            own.start()  # same port
            deadline = time.monotonic() + 60
            status = 0
            while time.monotonic() < deadline:
                status = _vqa(c, remote.url, image_bytes, "after?").status_code
                if status == 200:
                    break
                time.sleep(0.5)
            assert status == 200, ("no answer after Redis came back; the worker's log:\n"
                                   + _worker_log(proc))
            assert c.get(f"{remote.url}/readyz").status_code == 200
            assert proc.poll() is None
            assert "Unrecoverable error" not in _worker_log(proc)
            if ack_delay_s:
                assert "left to the visibility sweep" in _worker_log(proc)
    finally:
        stop_worker(proc)
        own.stop()


def test_transport_choice_by_scheme() -> None:
    # redis:// gets the transport whose channel close survives a lost broker; rediss:// keeps
    # kombu's own, so kombu's TLS defaults for the scheme still apply
    from kombu.transport.redis import Transport

    from service.queue import RedisTransport, make_celery
    from service.settings import Settings

    plain = make_celery(Settings(redis_url="redis://127.0.0.1:1/0"))
    assert plain.connection_for_write().get_transport_cls() is RedisTransport
    tls = make_celery(Settings(redis_url="rediss://127.0.0.1:1/0?ssl_cert_reqs=required"))
    assert tls.connection_for_write().get_transport_cls() is Transport


def test_worker_killed_while_holding_requests(serve: Callable[..., LiveServer],
                                              front: LoadedModel, demo_release: Path,
                                              tmp_path: Path, image_bytes: bytes) -> None:
    # Requests in flight when the worker dies (some inside its batcher): each is answered or
    # fails with a clear 5xx within its deadline; none hangs; a new worker serves again.
    import signal

    own = RedisServer(tmp_path).start()
    proc = start_worker(demo_release, own.url, concurrency=8)
    second = None
    timeout = 4.0
    try:
        remote = serve(models={"demo": front}, queue="celery", redis_url=own.url,
                       request_timeout_s=timeout)
        results: list[tuple[Any, float]] = []
        lock = threading.Lock()
        stop = threading.Event()

        def client(i: int) -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    r = _vqa(c, remote.url, image_bytes, f"how many circles {i}?")
                    with lock:
                        results.append((r.status_code, time.monotonic() - t0))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(results) < 24 and time.monotonic() < deadline:
            time.sleep(0.02)
        before = len(results)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(timeout + 1.5)  # every request the dead worker held passes its deadline
        stop.set()
        for t in threads:
            t.join(30)
        statuses = [s for s, _ in results]
        assert before >= 24 and set(statuses) <= {200, 503, 504}, set(statuses)
        assert 504 in statuses[before:]  # held or queued with no worker: a clear 504
        assert max(e for _, e in results) < timeout + 2.0  # nothing hangs past its deadline
        second = start_worker(demo_release, own.url, concurrency=2)
        with httpx.Client(timeout=60) as c:
            assert _vqa(c, remote.url, image_bytes, "after?").status_code == 200
    finally:
        stop_worker(proc)
        if second is not None:
            stop_worker(second)
        own.stop()

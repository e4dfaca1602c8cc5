"""Serving benchmark: the HTTP service in local mode and in Celery mode against its in-process
ceiling and against LitServe, and batch-prediction jobs against ``training.predict``, all
measured in one run. Prints one JSON object on stdout (progress goes to stderr).

    make bench-serve        # runs: .venv/bin/python bench/serve.py
    .venv/bin/python bench/serve.py [--model RELEASE_DIR] [--duration 10] [--warmup 2]
        [--concurrency 1 8 32 64] [--batch-sizes 1 4 8 16 32 64] [--inprocess-seconds S]
        [--max-batch-size 32] [--max-wait-ms 5] [--torch-threads 1|N|auto]
        [--decode-threads N] [--no-litserve] [--modes local,celery] [--worker-concurrency N]
        [--jobs | --no-jobs] [--job-batch-size 32] [--profile] [--profile-seconds 10]
        [--service-root DIR] [--out FILE] [--keep DIR]
        [--demo-run-dir runs/bench_demo] [--demo-updates 20] [--data-dir data/shapes]

Needs ``wrk`` (Debian: ``apt-get install -y wrk``; without it only the in-process figures are
measured, the JSON says ``"wrk": "absent ..."`` and the exit status is 1) and the ``bench``
extra (``pip install -e '.[bench]'``: LitServe, without which the ``litserve`` section says
why it was skipped, and py-spy, which names the service's threads in the CPU accounting and
runs ``--profile``); Celery mode needs ``redis-server`` (Debian: ``apt-get install -y
redis-server``; without it the ``celery`` section says why it was skipped and the exit status
is 1). A default run takes about 8 minutes (24 load points of 2 + 10 s, the in-process loop
twice, 4 server starts and 2 Celery stacks, two jobs and ``training.predict`` twice).

Take the final figures on a quiet machine: the servers, wrk and the in-process loop share
the machine's cores, and other jobs (training) distort every figure. Each point reports
``other_cores`` (CPU the rest of the machine used meanwhile: should be ~0); the servers are
measured interleaved (per concurrency every server in turn) and the in-process loop runs
before and after them, so that a change of the background load does not favour one side.

The model: ``--model RELEASE_DIR``, else the ShapesWorld multi-task demo model
(``service.demo``: ResNet-18 trunk, 64 x 64 input) trained for ``--demo-updates`` updates
into ``--demo-run-dir`` (reused when there; speed does not depend on the weights), on
``--data-dir`` if it holds ShapesWorld, else on a small ShapesWorld generated into
``DEMO_RUN_DIR/shapes``. (``--model runs/demo/release`` reuses ``make serve``'s model.) The
request: a ShapesWorld VQA v2 val JPEG (128 x 128) and its question as one fixed multipart
body (``image`` file, ``question``, ``top_k=5``), POSTed to ``/vqa`` by wrk with
``bench/wrk/multipart.lua``.

Torch threads: every server, the Celery worker, ``training.predict`` and the in-process loop
use ``--torch-threads`` (servers and the worker through
``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, LitServe's worker and this process also through
``torch.set_num_threads``). Default 1: on a 2-core machine a second intra-op thread gave the
service no more throughput at concurrency 32 (211 vs 213, then 194 vs 169 requests/s) while
competing with the event loop, the decoding threads and wrk for the second core. ``auto``
measures 1 and 2 on the batched service first (twice each, interleaved), keeps the faster and
reports ``torch_threads_probe``: use it on other hardware.

What the figures mean:

* ``in_process``: the ceiling. ``Predictor.vqa`` in a loop from JPEG bytes to answers (per
  item ``service.images.decode_image`` + ``Predictor.preprocess``, one ``vqa`` call per
  batch), no HTTP, one Python thread, ``--inprocess-seconds`` per batch size (default half
  of ``--duration``), before and after the servers; per batch size the better run is kept
  (``items_per_s_runs`` lists both). ``items_per_s``, ``ms_per_item``, ``cpu_ms_per_item``
  (process CPU), ``decode_ms_per_item`` (decode + preprocess), ``model_ms_per_batch``
  (median ``vqa`` call); ``batch1_*`` and ``best_batch``/``best_items_per_s`` summarise.
* ``service.batched`` (``PYTHIA_MAX_BATCH_SIZE=--max-batch-size``,
  ``PYTHIA_MAX_WAIT_MS=--max-wait-ms``) and ``service.unbatched``
  (``PYTHIA_MAX_BATCH_SIZE=1``): ``python -m service`` as one process, ``PYTHIA_DEVICE=cpu``,
  driven by ``wrk -t1 -c<concurrency> --latency`` (closed loop: a connection sends its next
  request when the previous answer came) for ``--duration`` s after ``--warmup`` s. Per
  point: ``rps`` (requests/s), ``p50_ms``/``p95_ms``/``p99_ms``/``mean_ms`` (wrk's latency),
  ``errors`` (non-2xx answers + socket errors + timeouts: must be 0; ``errors_detail`` when
  not; ``no_answer`` when nothing was answered in time), ``mean_batch_size`` (the
  service's ``pythia_batch_size`` histogram; LitServe's from its batch log), ``drain_s``
  (how long the server kept computing after wrk stopped: abandoned requests it did not drop;
  every run waits for the server to go idle, so the next point does not pay for them),
  ``cpu_ms_per_request`` (CPU of the server's processes per answered request),
  ``cpu_ms_per_request_by_thread`` (the service's event loop, decoding threads and inference
  thread, named through ``py-spy dump``), ``server_cores``, ``wrk_cores``, ``other_cores``.
  ``check`` is one request made before the load, with its answers and ``timing_ms``.
* ``litserve.batched`` / ``litserve.unbatched``: the same for ``bench/litserve_vqa.py``:
  LitServe serving the same release with the same decoding and ``Predictor.vqa``
  (``max_batch_size`` and ``batch_timeout`` = the service's max batch size and max wait,
  ``workers_per_device=1``, ``accelerator="cpu"``, one API server, same torch threads).
* ``celery.batched`` / ``celery.unbatched`` (``--modes`` with ``celery``): the same points for
  Celery mode with one worker. Per stack a private ``redis-server`` (``--save ""
  --appendonly no``), one worker ``python -m celery -A service.worker worker --pool threads
  --concurrency <--worker-concurrency> --loglevel warning --without-gossip --without-mingle
  --without-heartbeat`` (``PYTHIA_MODELS``, ``PYTHIA_DEVICE=cpu``, the same
  ``PYTHIA_MAX_BATCH_SIZE`` / ``PYTHIA_MAX_WAIT_MS`` and torch threads as the local server)
  and the API (``PYTHIA_QUEUE=celery``: decodes, publishes, waits; no weights), driven by wrk
  exactly like the local server and interleaved with it. The three processes share one
  process group: ``cpu_ms_per_request``/``server_cores`` cover the whole stack (API + worker
  + Redis), ``cpu_ms_per_request_by_process`` splits it; there is no ``mean_batch_size``
  (the worker exports no metrics) and no per-thread split. ``startup_s`` runs until a first
  ``/vqa`` answer came back through the worker.
* ``jobs`` (``--jobs``, default on): ``POST /jobs`` ``{"task": "vqa", "dataset": "vqa2",
  "split": "val", "data_dir": "vqa2", "batch_size": --job-batch-size}`` on the batched local
  server and the batched Celery stack (``PYTHIA_DATA_ROOT`` = the ShapesWorld root of the
  sample image; one worker), timed from the POST until ``GET /jobs/{id}`` says ``done``
  (polled every 20 ms), after the load points; against ``training.predict.predict`` on the
  same split with the same batch size in this process (its own ``seconds``: loading the
  release and the split included), run before and after the jobs, the faster run kept.
  Per mode: ``questions``, ``seconds``, ``job_questions_per_s``, ``predict_questions_per_s``,
  ``ratio`` (job / predict, target >= 0.8), ``met``, ``same_as_predict`` (the job's file has
  the same rows as predict's); ``predict`` lists both predict runs. The demo's generated
  ShapesWorld val split is small (80 questions): fixed costs weigh on both sides; pass
  ``--data-dir`` with a bigger ShapesWorld for steadier figures.
* ``ratios`` (``value``, ``target``, ``met``), from the points at concurrency 32:
  ``served_vs_ceiling`` = service batched rps / in-process best items/s (target >= 0.75);
  ``service_vs_litserve`` = service batched rps / LitServe batched rps (>= 1.2);
  ``batching_gain_vs_inprocess`` = (service batched rps / service unbatched rps) /
  (in-process best items/s / in-process batch-1 items/s) (>= 0.8); and at concurrency 1
  ``p50_overhead_ms`` = service batched p50 - in-process batch-1 ms per item (<= 5);
  ``celery_vs_local_c32`` = Celery batched rps / local batched rps (>= 0.8), and
  ``jobs_vs_predict_local`` / ``jobs_vs_predict_celery`` = the jobs' ratios (>= 0.8), when
  measured.
* ``cpu_ratios``: the first three again from CPU time per request instead of requests/s
  (robust to other load, blind to parallelism), and the service's CPU ms per request above
  the in-process CPU ms per item.
* ``profile`` (``--profile``): py-spy on the batched service at concurrency 32 (extra,
  unmeasured runs): ``cpu`` samples every active thread, ``gil`` only the GIL holder; each
  gives the share of samples per cost (multipart parsing, JSON encoding, request validation,
  metrics, image decoding, preprocessing, model, engine/futures, route handler, HTTP + event
  loop, thread wake-up: a pool thread handed work and waiting for the GIL), per thread, and
  the top functions by own samples.

``--service-root DIR`` serves the ``service`` package of another directory (A/B a change to
the service against the same models); ``--keep DIR`` keeps the server logs, the request body
and py-spy's raw stacks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LUA = ROOT / "bench" / "wrk" / "multipart.lua"
LITSERVE_SCRIPT = ROOT / "bench" / "litserve_vqa.py"
BOUNDARY = "pythia-bench-7f3c2a9e51d04b86"
TARGETS = {"served_vs_ceiling": (">=", 0.75), "service_vs_litserve": (">=", 1.2),
           "batching_gain_vs_inprocess": (">=", 0.8), "p50_overhead_ms": ("<=", 5.0),
           "celery_vs_local_c32": (">=", 0.8), "jobs_vs_predict_local": (">=", 0.8),
           "jobs_vs_predict_celery": (">=", 0.8)}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[bench/serve] {msg}", file=sys.stderr, flush=True)


# -- the request ----------------------------------------------------------------------------------
@dataclass
class Sample:
    image: bytes
    question: str
    path: str
    body: bytes = b""
    content_type: str = ""


def demo_release(args: argparse.Namespace) -> tuple[Path, Path]:
    """(the demo model's release, its data): ``service.demo`` trains it into
    ``--demo-run-dir`` unless a release is already there, on ``--data-dir`` when that holds all
    five ShapesWorld datasets, else on a small ShapesWorld generated into
    ``DEMO_RUN_DIR/shapes`` (the final evaluation on a full val split takes minutes)."""
    from service.demo import DATASETS, ensure_demo_model, release_ok

    data_dir: Path = args.data_dir
    run_dir: Path = args.demo_run_dir
    if not all((data_dir / d).is_dir() for d in DATASETS):
        data_dir = run_dir / "shapes"
        if not release_ok(run_dir / "release") and \
                not all((data_dir / d).is_dir() for d in DATASETS):
            from training.data import shapes

            log(f"generating a small ShapesWorld into {data_dir}")
            shapes.generate(data_dir, train_images=96, val_images=16, test_images=8)
    log(f"no --model: the ShapesWorld demo model in {run_dir} (trained if not there)")
    release = ensure_demo_model(run_dir, data_dir, updates=args.demo_updates, device="cpu")
    return release, data_dir


def model_release(args: argparse.Namespace) -> tuple[Path, Path]:
    """(release, data): ``--model`` with ``--data-dir``, or the demo model and its data
    (``demo_release``); the release path resolved."""
    release, data_dir = demo_release(args) if args.model is None else (args.model, args.data_dir)
    return release.resolve(), data_dir


def find_sample(data_dir: Path, scratch: Path) -> Sample:
    """A ShapesWorld VQA v2 val JPEG and its first question (tiny data generated if needed)."""
    questions = data_dir / "vqa2" / "v2_OpenEnded_mscoco_val2014_questions.json"
    if not questions.is_file():
        from training.data import shapes

        data_dir = scratch / "shapes"
        log(f"no ShapesWorld VQA v2 data found; generating a few images into {data_dir}")
        shapes.generate(data_dir, train_images=2, val_images=2, test_images=1,
                        datasets="vqa2", workers=1)
        questions = data_dir / "vqa2" / "v2_OpenEnded_mscoco_val2014_questions.json"
    for q in json.loads(questions.read_text())["questions"]:
        path = data_dir / "vqa2" / "val2014" / f"COCO_val2014_{int(q['image_id']):012d}.jpg"
        if path.is_file():
            return Sample(path.read_bytes(), q["question"], str(path))
    raise SystemExit(f"error: no val2014 image with a question under {data_dir / 'vqa2'}")


def multipart_body(sample: Sample, top_k: int = 5) -> tuple[bytes, str]:
    crlf = b"\r\n"
    parts = [
        b"--" + BOUNDARY.encode(),
        b'Content-Disposition: form-data; name="image"; filename="shapes.jpg"',
        b"Content-Type: image/jpeg", b"", sample.image,
        b"--" + BOUNDARY.encode(),
        b'Content-Disposition: form-data; name="question"', b"", sample.question.encode(),
        b"--" + BOUNDARY.encode(),
        b'Content-Disposition: form-data; name="top_k"', b"", str(top_k).encode(),
        b"--" + BOUNDARY.encode() + b"--", b"",
    ]
    return crlf.join(parts), f"multipart/form-data; boundary={BOUNDARY}"


# -- the in-process ceiling -----------------------------------------------------------------------
def vqa_dataset(predictor: Any) -> str:
    """The answer head the service uses by default for ``/vqa``: ``vqa2`` when the model
    has it (a multi-task model routes per dataset), else its first VQA head (not an OCR one)."""
    from models.predictor import DEFAULT_DATASET

    preferred = DEFAULT_DATASET["vqa"]
    routes = getattr(predictor.model, "route", None)
    if not isinstance(routes, dict):
        return preferred
    ocr = set(getattr(predictor.model, "ocr_heads", {}) or {})
    names = sorted(d for d, r in routes.items() if r == "vqa" and d not in ocr)
    return preferred if preferred in names or not names else names[0]


def load_predictor(release: Path) -> Any:
    from models.predictor import Predictor

    return Predictor.from_pretrained(release, device="cpu")


def in_process(p: Any, sample: Sample, batch_sizes: Sequence[int], seconds: float
               ) -> dict[str, dict[str, Any]]:
    """``decode_image`` + ``preprocess`` per item and one ``Predictor.vqa`` per batch, timed
    for ``seconds`` per batch size after a warm-up call: {batch size: figures}."""
    from service.images import decode_image
    from service.settings import Settings

    limits = Settings()
    dataset = vqa_dataset(p)
    size = p.transform.size
    cpu = 0.0

    def step(b: int) -> tuple[float, float]:
        nonlocal cpu
        c0 = time.process_time()
        t0 = time.perf_counter()
        pixels = [p.preprocess(decode_image(sample.image, max_bytes=limits.max_upload_bytes,
                                            max_pixels=limits.max_image_pixels,
                                            target_size=size)) for _ in range(b)]
        t1 = time.perf_counter()
        answers = p.vqa(pixels, [sample.question] * b, top_k=5, dataset=dataset)
        t2 = time.perf_counter()
        cpu += time.process_time() - c0
        assert len(answers) == b and answers[0], "vqa returned no answers"
        return t1 - t0, t2 - t1

    out: dict[str, dict[str, Any]] = {}
    for b in batch_sizes:
        for _ in range(2 if b <= 8 else 1):  # warm-up
            step(b)
        cpu = 0.0
        decode: list[float] = []
        model: list[float] = []
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(model) < 3:
            d, m = step(b)
            decode.append(d)
            model.append(m)
        elapsed = sum(decode) + sum(model)
        items = b * len(model)
        out[str(b)] = {
            "items_per_s": round(items / elapsed, 2),
            "ms_per_item": round(1000 * elapsed / items, 3),
            "cpu_ms_per_item": round(1000 * cpu / items, 3),
            "decode_ms_per_item": round(1000 * sum(decode) / items, 3),
            "model_ms_per_batch": round(1000 * statistics.median(model), 3),
            "calls": len(model),
        }
        log(f"in-process batch {b}: {out[str(b)]['items_per_s']} items/s")
    return out


def ceiling(p: Any, release: Path, runs: Sequence[dict[str, dict[str, Any]]],
            batch_sizes: Sequence[int]) -> dict[str, Any]:
    """The in-process summary over its runs (before and after the servers): per batch size
    the run with the most items/s (a ceiling: the least disturbed run)."""
    best_runs: dict[str, dict[str, Any]] = {}
    for b in runs[0]:
        best_runs[b] = max((r[b] for r in runs), key=lambda fig: float(fig["items_per_s"]))
    items = {b: [r[b]["items_per_s"] for r in runs] for b in runs[0]}
    best = max(best_runs, key=lambda b: best_runs[b]["items_per_s"])
    first = str(batch_sizes[0])
    return {
        "batch": {b: {**v, "items_per_s_runs": items[b]} for b, v in best_runs.items()},
        "batch1_items_per_s": best_runs[first]["items_per_s"],
        "batch1_ms_per_item": best_runs[first]["ms_per_item"],
        "best_batch": int(best), "best_items_per_s": best_runs[best]["items_per_s"],
        "model": {"family": p.model.family, "image_size": p.transform.size,
                  "dataset": vqa_dataset(p), "parameters": p.model.num_parameters(),
                  "release": str(release)},
    }


# -- CPU accounting -------------------------------------------------------------------------------
def _group_cpu_s(pgid: int) -> float:
    """User + system CPU seconds of the live processes of a process group."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _machine_busy_s() -> float:
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
    return (sum(cpu[:8]) - idle) / CLK_TCK


def _thread_cpu_s(pid: int) -> dict[int, float]:
    """{thread id: user + system CPU seconds} of one process."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


_DUMP_THREAD = re.compile(r"^Thread (\d+) \((?:active|idle)[^)]*\): \"(.*)\"", re.M)


def _thread_names(pyspy: str, pid: int) -> dict[int, str]:
    """{thread id: Python thread name} from ``py-spy dump``."""
    try:
        out = subprocess.run([pyspy, "dump", "--pid", str(pid), "--nonblocking"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(tid): name for tid, name in _DUMP_THREAD.findall(out)}


# -- servers --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _http(method: str, url: str, body: bytes | None = None, ctype: str | None = None,
          timeout: float = 30.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method=method)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


@dataclass
class Server:
    name: str
    cmd: list[str]
    env: dict[str, str]
    port: int
    ready_path: str
    log_path: Path
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None
    started_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180.0) -> None:
        t0 = time.perf_counter()
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n"
                                   f"{self.log_tail()}")
            try:
                status, _ = _http("GET", self.url + self.ready_path, timeout=2)
                if status == 200:
                    self.started_s = round(time.perf_counter() - t0, 1)
                    return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"{self.name} not ready after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's own process group (LitServe forks workers), SIGKILL if it
        has not exited after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session: the group is the server's own
        try:
            os.killpg(pgid, signal.SIGTERM)
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(10)
        except ProcessLookupError:
            pass
        # children left behind in the group (a LitServe worker that ignored SIGTERM)
        deadline = time.monotonic() + 10
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_env(threads: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHIA_")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    return env


def pythia_server(release: Path, *, max_batch: int, max_wait_ms: float, threads: int,
                  decode_threads: int | None, scratch: Path, label: str,
                  service_root: Path | None = None, data_root: Path | None = None) -> Server:
    """``python -m service`` on a free port; ``service_root``: import the ``service`` package
    from that directory instead of this checkout (``models`` etc. still come from here)."""
    port = free_port()
    env = _clean_env(threads)
    if service_root is not None:
        env["PYTHONPATH"] = f"{service_root}{os.pathsep}{ROOT}"
    env.update(PYTHIA_DEVICE="cpu", PYTHIA_MAX_BATCH_SIZE=str(max_batch),
               PYTHIA_MAX_WAIT_MS=str(max_wait_ms), PYTHIA_HOST="127.0.0.1",
               PYTHIA_PORT=str(port))
    if decode_threads is not None:
        env["PYTHIA_DECODE_THREADS"] = str(decode_threads)
    if data_root is not None:
        env["PYTHIA_DATA_ROOT"] = str(data_root)
    cmd = [sys.executable, "-m", "service", "--model", f"bench={release}", "--log-level",
           "warning"]
    return Server(f"service ({label})", cmd, env, port, "/readyz",
                  scratch / f"service-{label}.log", cwd=service_root or ROOT)


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads, also the finished ones)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@dataclass
class CeleryStack(Server):
    """Celery mode as one ``Server``: a private ``redis-server`` (the process group's leader,
    so the CPU accounting covers the whole stack), one worker (``celery -A service.worker
    worker --pool threads``, which loads the model) and the API (``PYTHIA_QUEUE=celery``, no
    weights), both in redis's process group. ``url`` is the API's."""

    redis_cmd: list[str] = field(default_factory=list)
    worker_cmd: list[str] = field(default_factory=list)
    worker_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.log_path.with_suffix(f".{name}.log")
        leader = self.procs.get("redis")
        with log_path.open("wb") as out:
            # a new process group led by redis (not a new session: joining a group of
            # another session is not permitted)
            proc = subprocess.Popen(cmd, env=env, cwd=self.cwd, stdout=out,
                                    stderr=subprocess.STDOUT,
                                    process_group=0 if leader is None else leader.pid)
        self.procs[name] = proc
        self.extra.setdefault("processes", {})[name] = proc.pid
        return proc

    def start(self, timeout: float = 180.0) -> None:
        """Redis, then the worker, then the API; ready when a ``/vqa`` request went through
        the worker (the worker logs nothing at ``--loglevel warning``: its first answer is
        the readiness signal; requests sent before it consumed just wait in the queue)."""
        t0 = time.perf_counter()
        try:
            import redis

            self.proc = self._spawn("redis", self.redis_cmd, dict(os.environ))
            client = redis.Redis.from_url(self.env["PYTHIA_REDIS_URL"],
                                          socket_connect_timeout=0.5)
            deadline = time.monotonic() + 20
            while True:
                try:
                    if client.ping():
                        break
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        raise RuntimeError(f"redis-server did not start:\n{self.log_tail()}"
                                           ) from None
                    time.sleep(0.05)
            client.close()
            self._spawn("worker", self.worker_cmd, self.worker_env)
            self._spawn("api", self.cmd, self.env)
            deadline = time.monotonic() + timeout
            body = self.extra["check_body"]
            while True:
                for name, proc in self.procs.items():
                    if proc.poll() is not None:
                        raise RuntimeError(f"{self.name}: {name} exited with "
                                           f"{proc.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} not ready after {timeout} s:\n"
                                       f"{self.log_tail()}")
                try:
                    status, _ = _http("POST", self.url + "/vqa", body[0], body[1], timeout=60)
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.25)
        except BaseException:
            self.stop()
            raise
        self.started_s = round(time.perf_counter() - t0, 1)

    def stop(self) -> None:
        """The API, then the worker (each SIGTERM, SIGKILL after 30 s), then Redis; then
        anything left in the group."""
        for name in ("api", "worker", "redis"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        leader = self.procs.get("redis")
        if leader is not None and _group_alive(leader.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(leader.pid, signal.SIGKILL)

    def log_tail(self, lines: int = 30) -> str:
        tails = []
        for name in self.procs:
            path = self.log_path.with_suffix(f".{name}.log")
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                tails.append(f"--- {name} ---\n" + "\n".join(text))
        return "\n".join(tails)


def celery_stack(release: Path, *, max_batch: int, max_wait_ms: float, threads: int,
                 decode_threads: int | None, worker_concurrency: int, redis_server: str,
                 scratch: Path, label: str, service_root: Path | None = None,
                 data_root: Path | None = None) -> CeleryStack:
    """Celery mode with one worker: the API's settings as ``pythia_server``'s plus
    ``PYTHIA_QUEUE=celery``; the worker with the same torch threads (``OMP_NUM_THREADS`` /
    ``MKL_NUM_THREADS``), batch size and wait, ``--concurrency worker_concurrency``."""
    api = pythia_server(release, max_batch=max_batch, max_wait_ms=max_wait_ms, threads=threads,
                        decode_threads=decode_threads, scratch=scratch, label=label,
                        service_root=service_root, data_root=data_root)
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    api.env.update(PYTHIA_QUEUE="celery", PYTHIA_REDIS_URL=redis_url)
    worker_env = _clean_env(threads)
    worker_env["PYTHONPATH"] = api.env["PYTHONPATH"]
    worker_env.update(PYTHIA_MODELS=f"bench={release}", PYTHIA_REDIS_URL=redis_url,
                      PYTHIA_DEVICE="cpu", PYTHIA_MAX_BATCH_SIZE=str(max_batch),
                      PYTHIA_MAX_WAIT_MS=str(max_wait_ms))
    if data_root is not None:
        worker_env["PYTHIA_DATA_ROOT"] = str(data_root)
    worker_cmd = [sys.executable, "-m", "celery", "-A", "service.worker", "worker", "--pool",
                  "threads", "--concurrency", str(worker_concurrency), "--loglevel", "warning",
                  "--without-gossip", "--without-mingle", "--without-heartbeat",
                  "-n", f"bench-{redis_port}@%h"]
    redis_dir = scratch / f"redis-{label}"
    redis_dir.mkdir(exist_ok=True)
    redis_cmd = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(redis_dir)]
    return CeleryStack(f"celery ({label})", api.cmd, api.env, api.port, "/readyz",
                       scratch / f"celery-{label}", cwd=api.cwd, redis_cmd=redis_cmd,
                       worker_cmd=worker_cmd, worker_env=worker_env)


def litserve_server(release: Path, *, max_batch: int, max_wait_ms: float, threads: int,
                    scratch: Path, label: str) -> Server:
    port = free_port()
    cmd = [sys.executable, str(LITSERVE_SCRIPT), "--model", str(release), "--port", str(port),
           "--max-batch-size", str(max_batch), "--batch-timeout-ms", str(max_wait_ms),
           "--torch-threads", str(threads)]
    env = _clean_env(threads)
    batch_log = scratch / f"litserve-{label}.batches"
    env["BENCH_BATCH_LOG"] = str(batch_log)
    server = Server(f"litserve ({label})", cmd, env, port, "/health",
                    scratch / f"litserve-{label}.log")
    server.extra["batch_log"] = batch_log
    return server


def check_answer(server: Server, sample: Sample) -> dict[str, Any]:
    """One request through urllib: must be 200 with answers."""
    status, raw = _http("POST", server.url + "/vqa", sample.body, sample.content_type)
    try:
        body = json.loads(raw)
    except ValueError:
        body = {"raw": raw[:300].decode(errors="replace")}
    if status != 200 or not body.get("answers"):
        raise RuntimeError(f"{server.name}: POST /vqa answered {status}: {body}\n"
                           f"{server.log_tail()}")
    return {"status": status, "answers": body["answers"][:2],
            "timing_ms": body.get("timing_ms")}


# -- wrk ------------------------------------------------------------------------------------------
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def run_wrk(url: str, body_file: Path, ctype: str, connections: int, seconds: int
            ) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, seconds)}s", "--latency",
           "--timeout", "60s", "-s", str(LUA), url, "--", str(body_file), ctype]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout[-2000:]}"
                           f"{proc.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(line[len("WRK_JSON "):])
    found = _NON2XX.search(proc.stdout)
    data["non_2xx"] = int(found.group(1)) if found else 0
    return data


def _pythia_batches(server: Server) -> tuple[float, float]:
    """(sum, count) of the service's pythia_batch_size histogram."""
    try:
        status, raw = _http("GET", server.url + "/metrics", timeout=10)
    except OSError:
        return 0.0, 0.0
    total = count = 0.0
    if status == 200:
        for ln in raw.decode().splitlines():
            if ln.startswith("pythia_batch_size_sum"):
                total += float(ln.rsplit(" ", 1)[1])
            elif ln.startswith("pythia_batch_size_count"):
                count += float(ln.rsplit(" ", 1)[1])
    return total, count


def wait_idle(server: Server, timeout: float = 60.0) -> float:
    """Seconds until the server's processes use under 0.1 core (over 0.2 s): when wrk stops,
    requests still in flight are abandoned, and a server that does not drop them keeps
    computing them; the next point must not pay for that."""
    assert server.proc is not None
    t0 = time.perf_counter()
    last = _group_cpu_s(server.proc.pid)
    while time.perf_counter() - t0 < timeout:
        time.sleep(0.2)
        now = _group_cpu_s(server.proc.pid)
        if now - last < 0.1 * 0.2:
            break
        last = now
    return round(time.perf_counter() - t0, 1)


def _batches(server: Server, pythia: bool) -> tuple[float, float]:
    """(items, batches) so far: the service's pythia_batch_size histogram, or the batch log
    of bench/litserve_vqa.py."""
    if pythia:
        return _pythia_batches(server)
    log_file = server.extra.get("batch_log")
    if log_file is None or not Path(log_file).is_file():
        return 0.0, 0.0
    sizes = Path(log_file).read_text().split()
    return float(sum(int(v) for v in sizes)), float(len(sizes))


def measure(server: Server, sample_file: Path, ctype: str, connections: int, seconds: int,
            warmup: int, pythia: bool) -> dict[str, Any]:
    """One load point: a warm-up, then the measured wrk run with CPU accounting; each
    followed by waiting for the server to go idle (``drain_s``: the measured run's)."""
    url = server.url + "/vqa"
    assert server.proc is not None
    if warmup > 0:
        run_wrk(url, sample_file, ctype, connections, warmup)
        wait_idle(server)
    b0 = _batches(server, pythia)
    threads0 = _thread_cpu_s(server.proc.pid) if pythia else {}
    procs: dict[str, int] = server.extra.get("processes", {})
    procs0 = {name: _proc_cpu_s(pid) for name, pid in procs.items()}
    cpu0, busy0, kids0 = _group_cpu_s(server.proc.pid), _machine_busy_s(), \
        resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    w = run_wrk(url, sample_file, ctype, connections, seconds)
    wall = time.perf_counter() - t0
    cpu1, busy1, kids1 = _group_cpu_s(server.proc.pid), _machine_busy_s(), \
        resource.getrusage(resource.RUSAGE_CHILDREN)
    threads1 = _thread_cpu_s(server.proc.pid) if pythia else {}
    procs1 = {name: _proc_cpu_s(pid) for name, pid in procs.items()}
    drain = wait_idle(server)
    b1 = _batches(server, pythia)
    server_cores = (cpu1 - cpu0) / wall
    wrk_cores = (kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime) / wall
    busy_cores = (busy1 - busy0) / wall
    e = w["errors"]
    errors = max(e["status"], w["non_2xx"]) + e["connect"] + e["read"] + e["write"] + \
        e["timeout"]
    lat = w["latency_ms"]
    point: dict[str, Any] = {
        "concurrency": connections,
        "rps": round(w["requests"] / w["duration_s"], 2) if w["duration_s"] else 0.0,
        "p50_ms": lat["p50"], "p95_ms": lat["p95"], "p99_ms": lat["p99"],
        "mean_ms": lat["mean"], "requests": w["requests"], "errors": errors,
    }
    if not w["requests"]:
        errors += 1
        point["errors"] = errors
        point["no_answer"] = f"no request was answered within {seconds} s"
    if errors:
        point["errors_detail"] = {**e, "non_2xx": w["non_2xx"]}
    point["drain_s"] = drain
    if b1[1] > b0[1]:
        point["mean_batch_size"] = round((b1[0] - b0[0]) / (b1[1] - b0[1]), 2)
    pyspy = server.extra.get("pyspy")
    if pythia and pyspy and w["requests"]:
        names: dict[int, str] = server.extra.setdefault("thread_names", {})
        if set(threads1) - set(names):
            names.update(_thread_names(pyspy, server.proc.pid))
        per: dict[str, float] = defaultdict(float)
        for tid, used in threads1.items():
            kind = _thread_kind(names[tid]) if tid in names else "other (unnamed)"
            per[kind] += used - threads0.get(tid, 0.0)
        point["cpu_ms_per_request_by_thread"] = {
            k: round(1000 * v / w["requests"], 3)
            for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v > 0}
    if procs and w["requests"]:
        point["cpu_ms_per_request_by_process"] = {
            name: round(1000 * (procs1[name] - procs0[name]) / w["requests"], 3)
            for name in procs}
    point.update(cpu_ms_per_request=round(1000 * (cpu1 - cpu0) / w["requests"], 3)
                 if w["requests"] else None,
                 server_cores=round(server_cores, 2), wrk_cores=round(wrk_cores, 2),
                 other_cores=round(max(0.0, busy_cores - server_cores - wrk_cores), 2))
    return point


def sweep(servers: Sequence[Server], sample: Sample, body_file: Path,
          args: argparse.Namespace, concurrencies: Sequence[int], seconds: int,
          then: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """Start every server, check one answer from each, then measure them interleaved: for
    each concurrency, every server in turn (so a change in the machine's other load spreads
    over all of them instead of biasing the later ones); ``then()`` runs after that, before
    the servers are stopped (at the end, also on errors)."""
    sections: list[dict[str, Any]] = []
    try:
        for server in servers:
            log(f"starting {server.name} on port {server.port}")
            server.start()
            sections.append({"startup_s": server.started_s,
                             "check": check_answer(server, sample), "points": []})
        for server in servers:  # nothing left over from the starts (model warm-up, forks)
            wait_idle(server)
        for c in concurrencies:
            for server, section in zip(servers, sections):
                point = measure(server, body_file, sample.content_type, c, seconds,
                                args.warmup, server.extra.get("pythia", False))
                section["points"].append(point)
                log(f"{server.name} c={c}: {point['rps']} req/s, p50 {point['p50_ms']} ms, "
                    f"errors {point['errors']}, server {point['server_cores']} cores, "
                    f"other load {point['other_cores']} cores")
        for server, section in zip(servers, sections):
            if server.extra.get("profile"):
                section["profile"] = profile(server, body_file, sample.content_type, args)
        if then is not None:
            then()
        return sections
    finally:
        for server in servers:
            server.stop()


# -- profile --------------------------------------------------------------------------------------
# (category, substrings of a py-spy frame "function (file:line)"), checked from the innermost
# frame outwards: the first frame that matches names the cost.
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("multipart parsing", ("python_multipart", "formparsers.py", "_read_fields")),
    ("json encoding", ("json/encoder.py", "json/__init__.py", "render (starlette")),
    ("request validation", ("pydantic", "_validate (")),
    ("metrics", ("prometheus_client",)),
    ("image decoding", ("service/images.py", "PIL/")),
    ("preprocessing", ("models/processors", "torchvision/transforms", "preprocess (")),
    ("model (Predictor.vqa)", ("models/", "torch/")),
    ("engine / futures", ("service/engine.py", "concurrent/futures", "threading.py")),
    ("route handler", ("service/app.py",)),
    ("HTTP + event loop", ("uvicorn", "httptools", "h11", "starlette", "fastapi", "asyncio",
                           "uvloop", "anyio")),
]


def _categorise(frames: Sequence[str]) -> str:
    if frames[-1].startswith(("_worker (concurrent/futures/thread.py", "Condition.wait (",
                              "Queue.get (")):
        # a pool thread handed work: it is runnable but waits for the GIL to return
        return "thread wake-up (waits for the GIL)"
    for frame in reversed(frames):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                return name
    return "other"


def _thread_kind(name: str) -> str:
    if name == "MainThread":
        return "event loop (main thread)"
    if name.startswith("decode"):
        return "decoding threads"
    if name.endswith("-inference"):
        return "inference thread"
    return f"other ({name.rstrip('_0123456789') or name})"


def summarise_profile(raw: str) -> dict[str, Any]:
    """py-spy ``--format raw --threads`` (collapsed stacks ``thread (TID): NAME;frame;...
    count``) -> shares of samples per cost, per thread and per function."""
    cats: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    thread_cats: dict[str, Counter[str]] = defaultdict(Counter)
    own: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        name = "?"
        if frames[0].startswith("thread ("):
            name = frames[0].split(": ", 1)[1] if ": " in frames[0] else "?"
            frames = frames[1:]
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if not frames:
            continue
        total += n
        cat = _categorise(frames)
        kind = _thread_kind(name)
        cats[cat] += n
        threads[kind] += n
        thread_cats[kind][cat] += n
        own[frames[-1]] += n

    def share(c: Counter[str], of: int) -> dict[str, float]:
        return {k: round(v / of, 3) for k, v in c.most_common()} if of else {}

    return {"samples": total, "by_cost": share(cats, total), "by_thread": share(threads, total),
            "by_thread_and_cost": {k: share(v, sum(v.values())) for k, v in
                                   sorted(thread_cats.items())},
            "top_functions": [{"frame": f, "share": round(n / total, 3)}
                              for f, n in own.most_common(12)] if total else []}


def profile(server: Server, body_file: Path, ctype: str, args: argparse.Namespace
            ) -> dict[str, Any]:
    """py-spy on the service process while wrk drives it at concurrency 32 (not a measured
    point): once sampling every active thread (where the CPU goes), once only the thread
    holding the GIL (``--gil``: what serialises the Python side)."""
    pyspy: str = server.extra["profile"]
    assert server.proc is not None
    seconds = args.profile_seconds
    out: dict[str, Any] = {}
    for mode, flags in (("cpu", []), ("gil", ["--gil"])):
        raw = server.log_path.with_suffix(f".pyspy-{mode}.txt")
        cmd = [pyspy, "record", "--pid", str(server.proc.pid), "--duration", str(seconds),
               "--rate", "200", "--format", "raw", "--threads", "--nonblocking", *flags,
               "--output", str(raw)]
        log(f"profiling {server.name} at concurrency 32 for {seconds} s (py-spy, {mode})")
        spy = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(0.5)
            w = run_wrk(server.url + "/vqa", body_file, ctype, 32, seconds)
            spy_out, _ = spy.communicate(timeout=seconds + 60)
        finally:
            if spy.poll() is None:
                spy.terminate()
                spy.wait(10)
        if not raw.is_file():
            out[mode] = {"skipped": f"py-spy wrote nothing: {spy_out[-500:]}"}
            continue
        summary = summarise_profile(raw.read_text())
        summary["rps_while_profiling"] = round(w["requests"] / max(w["duration_s"], 1e-9), 1)
        out[mode] = summary
    out["note"] = ("py-spy --nonblocking at 200 Hz during wrk -c32 (not a measured point). "
                   "cpu: samples of every active thread; gil: only the thread holding the GIL "
                   "(its sample count / (200 x seconds) ~ the GIL's busy share). A cost is the "
                   "innermost frame that matches a category (see CATEGORIES in bench/serve.py)")
    return out


# -- batch-prediction jobs ------------------------------------------------------------------------
JOB_TARGET = 0.8


def _rows_key(rows: Any) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def run_predict(release: Path, data_root: Path, split: str, batch_size: int, out: Path
                ) -> tuple[float, int, list[str]]:
    """``training.predict.predict`` in this process (torch threads as set): (seconds, as it
    reports them, loading the release and the split included; rows; the file's sorted rows)."""
    from training.predict import predict

    got = predict(release, "vqa2", data_root / "vqa2", split, out, batch_size=batch_size,
                  device="cpu")
    rows = json.loads(out.read_text())
    return float(got["seconds"]), len(rows), _rows_key(rows)


def run_job(server: Server, split: str, batch_size: int, timeout: float = 1800.0
            ) -> tuple[float, list[Any]]:
    """``POST /jobs`` for the vqa2 split, poll ``GET /jobs/{id}`` every 20 ms until done,
    fetch the result: (seconds from the POST to ``done``, the result's rows)."""
    body = json.dumps({"task": "vqa", "dataset": "vqa2", "split": split, "data_dir": "vqa2",
                       "batch_size": batch_size}).encode()
    t0 = time.perf_counter()
    status, raw = _http("POST", server.url + "/jobs", body, "application/json")
    if status != 202:
        raise RuntimeError(f"{server.name}: POST /jobs answered {status}: {raw[:500]!r}")
    job_id = json.loads(raw)["job_id"]
    while True:
        status, raw = _http("GET", f"{server.url}/jobs/{job_id}")
        meta = json.loads(raw) if status == 200 else {}
        if meta.get("status") == "done":
            seconds = time.perf_counter() - t0
            break
        if status != 200 or meta.get("status") == "failed":
            raise RuntimeError(f"{server.name}: job {job_id}: {status} {raw[:500]!r}\n"
                               f"{server.log_tail()}")
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"{server.name}: job {job_id} not done after {timeout} s")
        time.sleep(0.02)
    status, raw = _http("GET", f"{server.url}/jobs/{job_id}/result", timeout=120)
    if status != 200:
        raise RuntimeError(f"{server.name}: GET /jobs/{job_id}/result answered {status}")
    rows: list[Any] = json.loads(raw)
    return seconds, rows


def measure_jobs(servers: dict[str, Server], release: Path, data_root: Path, split: str,
                 batch_size: int, scratch: Path) -> dict[str, Any]:
    """Job throughput against ``training.predict`` on the same split: predict, every mode's
    job in turn, predict again (the faster predict run is the reference)."""
    out = scratch / "predict.json"
    log(f"jobs: training.predict on vqa2 {split} (batch {batch_size}), first run")
    p_s, questions, p_rows = run_predict(release, data_root, split, batch_size, out)
    predict_runs = [p_s]
    jobs: dict[str, Any] = {}
    for mode, server in servers.items():
        wait_idle(server)
        log(f"jobs: a {mode}-mode job on {server.name}")
        seconds, rows = run_job(server, split, batch_size)
        jobs[mode] = {"questions": len(rows), "seconds": round(seconds, 2),
                      "job_questions_per_s": round(len(rows) / seconds, 2),
                      "same_as_predict": _rows_key(rows) == p_rows}
        log(f"jobs: {mode}: {len(rows)} questions in {seconds:.2f} s")
    log("jobs: training.predict, second run")
    predict_runs.append(run_predict(release, data_root, split, batch_size, out)[0])
    best = min(predict_runs)
    predict_qps = round(questions / best, 2)
    for entry in jobs.values():
        ratio = entry["job_questions_per_s"] / predict_qps if predict_qps else None
        entry.update(predict_questions_per_s=predict_qps,
                     ratio=None if ratio is None else round(ratio, 3),
                     target=f">= {JOB_TARGET}", met=ratio is not None and ratio >= JOB_TARGET)
    return {**jobs, "predict": {"questions": questions, "seconds_runs":
                                [round(v, 2) for v in predict_runs],
                                "questions_per_s": predict_qps}}


# -- ratios ---------------------------------------------------------------------------------------
def _point(section: dict[str, Any] | None, c: int) -> dict[str, Any] | None:
    if not section or "points" not in section:
        return None
    return next((p for p in section["points"] if p["concurrency"] == c), None)


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    ip = result["in_process"]
    svc = result.get("service", {})
    lit = result.get("litserve", {})
    pb32, pu32 = _point(svc.get("batched"), 32), _point(svc.get("unbatched"), 32)
    lb32 = _point(lit.get("batched"), 32)
    pb1 = _point(svc.get("batched"), 1)
    values: dict[str, float | None] = {
        "served_vs_ceiling": pb32["rps"] / ip["best_items_per_s"] if pb32 else None,
        "service_vs_litserve": pb32["rps"] / lb32["rps"] if pb32 and lb32 and lb32["rps"]
        else None,
        "batching_gain_vs_inprocess": (pb32["rps"] / pu32["rps"])
        / (ip["best_items_per_s"] / ip["batch1_items_per_s"])
        if pb32 and pu32 and pu32["rps"] else None,
        "p50_overhead_ms": pb1["p50_ms"] - ip["batch1_ms_per_item"] if pb1 else None,
    }
    cb32 = _point(result.get("celery", {}).get("batched"), 32)
    if cb32 or "celery" in result:
        values["celery_vs_local_c32"] = cb32["rps"] / pb32["rps"] \
            if cb32 and pb32 and pb32["rps"] else None
    for mode in ("local", "celery"):
        job = result.get("jobs", {}).get(mode)
        if job is not None:
            values[f"jobs_vs_predict_{mode}"] = job.get("ratio")
    out: dict[str, Any] = {}
    for name, value in values.items():
        op, target = TARGETS[name]
        met = value is not None and (value >= target if op == ">=" else value <= target)
        out[name] = {"value": None if value is None else round(value, 3),
                     "target": f"{op} {target}", "met": met}
    return out


def cpu_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """The throughput ratios again from CPU time per request (server processes, all threads)
    instead of requests/s: much less sensitive to other jobs on the machine, but blind to
    parallelism (a server that puts a second core to use gains requests/s, not CPU time)."""
    ip = result["in_process"]
    svc = result.get("service", {})
    lit = result.get("litserve", {})
    pb32, pu32 = _point(svc.get("batched"), 32), _point(svc.get("unbatched"), 32)
    lb32 = _point(lit.get("batched"), 32)
    best, first = ip["batch"][str(ip["best_batch"])], ip["batch"][next(iter(ip["batch"]))]

    def cpu(p: dict[str, Any] | None) -> float | None:
        return p.get("cpu_ms_per_request") if p else None

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    gain = div(cpu(pu32), cpu(pb32))
    return {
        "served_vs_ceiling": div(best["cpu_ms_per_item"], cpu(pb32)),
        "service_vs_litserve": div(cpu(lb32), cpu(pb32)),
        "batching_gain_vs_inprocess": div(gain, div(first["cpu_ms_per_item"],
                                                    best["cpu_ms_per_item"])),
        "service_overhead_cpu_ms_per_request": round(cpu(pb32) - best["cpu_ms_per_item"], 3)
        if cpu(pb32) else None,
        "note": "CPU ms per request of the server processes vs the in-process CPU ms per item "
                "(concurrency 32): same definitions as ratios, informative, no targets",
    }


# -- main -----------------------------------------------------------------------------------------
def _parse_threads(text: str) -> int | str:
    if text == "auto":
        return text
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError("--torch-threads must be >= 1 or auto")
    return n


def _parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or set(modes) - {"local", "celery"}:
        raise argparse.ArgumentTypeError("--modes takes local, celery or local,celery")
    return sorted(set(modes), key=["local", "celery"].index)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, metavar="RELEASE_DIR",
                    help="the release to serve (default: the demo model, trained if needed)")
    ap.add_argument("--demo-run-dir", type=Path, default=ROOT / "runs" / "bench_demo")
    ap.add_argument("--demo-updates", type=int, default=20)
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data" / "shapes",
                    help="ShapesWorld data (the sample JPEG; the demo model's training data)")
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured point")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds before each point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64],
                    help="in-process batch sizes (the first is the batch-1 reference)")
    ap.add_argument("--inprocess-seconds", type=float, default=None,
                    help="seconds per in-process batch size (default: duration / 2)")
    ap.add_argument("--max-batch-size", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--torch-threads", type=_parse_threads, default=1, metavar="N|auto")
    ap.add_argument("--decode-threads", type=int, default=None,
                    help="PYTHIA_DECODE_THREADS (default: the service's own default)")
    ap.add_argument("--no-litserve", action="store_true", help="skip the LitServe peer")
    ap.add_argument("--modes", type=_parse_modes, default=["local", "celery"],
                    metavar="local,celery",
                    help="which service modes to load: local (the in-process engine; also "
                         "LitServe) and/or celery (API + one worker + a private redis-server)")
    ap.add_argument("--worker-concurrency", type=int, default=None,
                    help="the Celery worker's --concurrency (threads; default: the largest "
                         "of --max-batch-size and the concurrencies)")
    ap.add_argument("--jobs", action=argparse.BooleanOptionalAction, default=True,
                    help="measure batch-prediction jobs against training.predict")
    ap.add_argument("--job-batch-size", type=int, default=32)
    ap.add_argument("--service-root", type=Path, default=None, metavar="DIR",
                    help="serve the 'service' package found in DIR (A/B a change to the "
                         "service; the models come from this checkout)")
    ap.add_argument("--profile", action="store_true",
                    help="py-spy the batched service at concurrency 32 (extra run)")
    ap.add_argument("--profile-seconds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="copy the server logs, the request body and py-spy's raw stacks here")
    return ap.parse_args(argv)


def _find_tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # stdout carries the JSON only: what training or libraries print goes to stderr
    with contextlib.redirect_stdout(sys.stderr):
        result, status = run(args)
    order = ["note", "machine", "request", "wrk", "config", "torch_threads_probe",
             "in_process", "service", "litserve", "celery", "jobs", "ratios", "ratios_note",
             "cpu_ratios", "profile"]
    result = {k: result[k] for k in [*order, *(k for k in result if k not in order)]
              if k in result}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return status


def run(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    import torch

    concurrencies = sorted(set(args.concurrency))
    result: dict[str, Any] = {
        "note": "measured on whatever else runs on this machine: take final figures on a "
                "quiet machine (see other_cores per point)",
        "machine": {"cpus": os.cpu_count(), "load_avg_start": [round(v, 2) for v in
                                                                os.getloadavg()],
                    "torch": torch.__version__, "python": sys.version.split()[0]},
    }
    wrk = shutil.which("wrk")
    status = 0
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        scratch = Path(tmp)
        release, data_dir = model_release(args)
        sample = find_sample(data_dir, scratch)
        sample.body, sample.content_type = multipart_body(sample)
        body_file = scratch / "body.bin"
        body_file.write_bytes(sample.body)
        job_root = Path(sample.path).resolve().parents[2]  # ROOT/vqa2/val2014/x.jpg
        result["request"] = {"image": sample.path, "image_bytes": len(sample.image),
                             "question": sample.question, "body_bytes": len(sample.body),
                             "top_k": 5}

        def pythia(threads: int, max_batch: int, label: str) -> Server:
            return pythia_server(release, max_batch=max_batch, max_wait_ms=args.max_wait_ms,
                                 threads=threads, decode_threads=args.decode_threads,
                                 scratch=scratch, label=label, service_root=args.service_root,
                                 data_root=job_root)

        threads = args.torch_threads
        if wrk is None:
            result["wrk"] = "absent: install it (Debian: apt-get install -y wrk); only the " \
                            "in-process figures were measured"
            log("error: wrk is not installed (apt-get install -y wrk): no served figures")
            status = 1
            if threads == "auto":
                threads = 1
        elif threads == "auto":
            probes = [pythia(n, args.max_batch_size, f"threads-{n}") for n in (1, 2)]
            for probe in probes:
                probe.extra["pythia"] = True
            log("probing torch threads 1 and 2 on the batched service at concurrency 32")
            found = sweep(probes, sample, body_file, args, [32, 32],
                          max(3, args.duration // 2))
            result["torch_threads_probe"] = {
                str(n): {"rps": [pt["rps"] for pt in sec["points"]],
                         "p50_ms": [pt["p50_ms"] for pt in sec["points"]],
                         "other_cores": [pt["other_cores"] for pt in sec["points"]]}
                for n, sec in zip((1, 2), found)}
            threads = max((1, 2), key=lambda n: statistics.mean(
                result["torch_threads_probe"][str(n)]["rps"]))
        assert isinstance(threads, int)
        torch.set_num_threads(threads)
        result["config"] = {"torch_threads": threads, "max_batch_size": args.max_batch_size,
                            "max_wait_ms": args.max_wait_ms, "duration_s": args.duration,
                            "warmup_s": args.warmup, "concurrency": concurrencies,
                            "decode_threads": args.decode_threads or "service default",
                            "modes": args.modes, "jobs": args.jobs,
                            "service_root": str(args.service_root or ROOT),
                            "order": "interleaved: per concurrency, every server in turn",
                            "wrk": "wrk -t1 -c<concurrency> --latency --timeout 60s -s "
                                   "bench/wrk/multipart.lua"}

        log(f"in-process ceiling (torch threads {threads}), first run")
        predictor = load_predictor(release)
        seconds = args.inprocess_seconds or max(1.0, args.duration / 2)
        runs = [in_process(predictor, sample, args.batch_sizes, seconds)]

        if wrk is not None:
            servers: list[Server] = []
            kinds: list[tuple[str, str, int]] = []
            job_servers: dict[str, Server] = {}
            if "local" in args.modes:
                for label, max_batch in (("batched", args.max_batch_size), ("unbatched", 1)):
                    server = pythia(threads, max_batch, label)
                    server.extra["pythia"] = True
                    servers.append(server)
                    kinds.append(("service", label, max_batch))
                job_servers["local"] = servers[0]
            pyspy = _find_tool("py-spy")
            for server in servers:
                server.extra["pyspy"] = pyspy  # names the threads in the CPU accounting
            if args.profile and servers:
                if pyspy:
                    servers[0].extra["profile"] = pyspy
                else:
                    result["profile"] = {"skipped": "py-spy not found (pip install py-spy)"}
            lit: dict[str, Any] = {}
            if args.no_litserve:
                lit["skipped"] = "--no-litserve"
            elif "local" not in args.modes:
                lit["skipped"] = "--modes without local"
            else:
                try:
                    import litserve

                    lit["version"] = litserve.__version__
                except ImportError:
                    lit["skipped"] = "litserve is not installed (pip install -e '.[bench]')"
            if "skipped" not in lit:
                for label, max_batch in (("batched", args.max_batch_size), ("unbatched", 1)):
                    servers.append(litserve_server(release, max_batch=max_batch,
                                                   max_wait_ms=args.max_wait_ms,
                                                   threads=threads, scratch=scratch,
                                                   label=label))
                    kinds.append(("litserve", label, max_batch))
            cel: dict[str, Any] = {}
            redis_server = shutil.which("redis-server")
            worker_concurrency = args.worker_concurrency or max(args.max_batch_size,
                                                                *concurrencies)
            if "celery" not in args.modes:
                cel["skipped"] = "--modes without celery"
            elif redis_server is None:
                cel["skipped"] = "redis-server is not installed (apt-get install -y redis-server)"
                status = 1
            else:
                for label, max_batch in (("batched", args.max_batch_size), ("unbatched", 1)):
                    stack = celery_stack(release, max_batch=max_batch,
                                         max_wait_ms=args.max_wait_ms, threads=threads,
                                         decode_threads=args.decode_threads,
                                         worker_concurrency=worker_concurrency,
                                         redis_server=redis_server, scratch=scratch,
                                         label=label, service_root=args.service_root,
                                         data_root=job_root)
                    stack.extra["check_body"] = (sample.body, sample.content_type)
                    servers.append(stack)
                    kinds.append(("celery", label, max_batch))
                    if label == "batched":
                        job_servers["celery"] = stack

            def jobs() -> None:
                nonlocal status
                if not args.jobs:
                    result["jobs"] = {"skipped": "--no-jobs"}
                    return
                try:
                    result["jobs"] = measure_jobs(job_servers, release, job_root, "val",
                                                  args.job_batch_size, scratch)
                except Exception as exc:  # the load points stand; the jobs say why
                    log(f"jobs failed: {exc}")
                    result["jobs"] = {"error": str(exc)[-3000:]}
                    status = 1

            sections = sweep(servers, sample, body_file, args, concurrencies, args.duration,
                             then=jobs)
            svc: dict[str, Any] = {}
            for (kind, label, max_batch), section in zip(kinds, sections):
                if kind == "service":
                    section["settings"] = {"PYTHIA_MAX_BATCH_SIZE": max_batch,
                                           "PYTHIA_MAX_WAIT_MS": args.max_wait_ms}
                    svc[label] = section
                elif kind == "celery":
                    section["settings"] = {"PYTHIA_MAX_BATCH_SIZE": max_batch,
                                           "PYTHIA_MAX_WAIT_MS": args.max_wait_ms,
                                           "workers": 1,
                                           "worker_concurrency": worker_concurrency,
                                           "worker_pool": "threads"}
                    cel[label] = section
                else:
                    section["settings"] = {"max_batch_size": max_batch,
                                           "batch_timeout_s": args.max_wait_ms / 1000}
                    lit[label] = section
                if "profile" in section:
                    result["profile"] = section.pop("profile")
            result["service"] = svc if svc else {"skipped": "--modes without local"}
            result["litserve"] = lit
            result["celery"] = cel
            if 32 not in concurrencies or 1 not in concurrencies:
                result["ratios_note"] = "the ratios need concurrency 32 and 1 to be measured"

        log("in-process ceiling, second run")
        runs.append(in_process(predictor, sample, args.batch_sizes, seconds))
        result["in_process"] = ceiling(predictor, release, runs, args.batch_sizes)
        result["ratios"] = ratios(result)
        if wrk is not None:
            result["cpu_ratios"] = cpu_ratios(result)
        result["machine"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
        if args.keep is not None:
            shutil.copytree(scratch, args.keep, dirs_exist_ok=True)
            result["kept"] = str(args.keep)
    return result, status


if __name__ == "__main__":
    sys.exit(main())

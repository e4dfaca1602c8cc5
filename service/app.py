"""The HTTP service: ``create_app(settings, models)`` returns the FastAPI application.

Routes (see the README for curl examples):

* ``POST /vqa``, ``/textvqa``, ``/caption``, ``/dialog``: multipart/form-data (an ``image``
  file and text fields; list fields as JSON text) or application/json (``image`` as base64);
* ``GET /models``, ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus), ``/docs``, and the
  demo page at ``/``.

Every error is ``{"error": {"code", "message"}}`` with a 4xx status (5xx only for 503 not
ready / draining and 504 deadline): 400 malformed JSON or base64, 401 missing/wrong API key,
404 unknown route, model, task or answer head, 405 wrong method, 413 upload or pixels over
the limit, 415 image format or content type not accepted, 422 a field missing or out of
range (the message names it), 429 the model's queue is full (with ``Retry-After``).

A request's path: its body is read under a size cap (``BodyLimit``), its fields validated,
then the image is decoded and preprocessed in a decoding thread (never on the event loop)
while the model's engine knows it is coming (``Batcher.announce``), then it is queued and
awaited with its deadline; a client that disconnects first has its item dropped from the
queue. Responses carry ``timing_ms``: ``queue`` (submitted -> its batch began), ``inference``
(its batch's model time) and ``total`` (request received -> response).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from fastapi_offline import FastAPIOffline
from PIL import Image
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from service.engine import Batcher, DeadlineExceeded, Overloaded, ShuttingDown
from service.images import ImageError, decode_base64_image, decode_image
from service.jobs import (
    TASK_OF,
    JobError,
    JobRequest,
    JobStore,
    LocalJobs,
    plan_job,
    public_status,
    stream_result,
)
from service.remote import REDIS_ERRORS, CeleryClient, QueueFull, QueueUnavailable, RemoteError
from service.runners import Job, LoadedModel, TaskError
from service.settings import Settings, parse_rate

__all__ = ["ApiError", "ServiceState", "create_app"]

STATIC = Path(__file__).resolve().parent / "static"
JSON_OVERHEAD = 64 * 1024
# Smallest side an image is decoded at when the server runs OCR on it (a JPEG is otherwise
# decoded at reduced scale, down to the model's input size).
OCR_DECODE_SIZE = 1024  # allowance for the non-image fields of a request body
ROUTE_LABELS = {"/vqa", "/textvqa", "/caption", "/dialog", "/models", "/metrics", "/healthz",
                "/readyz", "/"}
DOCS_STATIC = "/docs-static"
JOB_ID = re.compile(r"[0-9a-f]{32}")
OPEN_PATHS = {"/", "/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"}


class ApiError(Exception):
    """An error response: ``{"error": {"code", "message"}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


def error_response(status: int, code: str, message: str,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=dict(headers or {}))


# -- the OpenAPI description of errors ------------------------------------------------------------
class ErrorDetail(BaseModel):
    model_config = {"extra": "forbid"}

    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error response: ``{"error": {"code", "message"}}``."""

    model_config = {"extra": "forbid"}

    error: ErrorDetail


ERROR_STATUSES: dict[int, str] = {
    400: "Malformed JSON, multipart or base64",
    401: "Missing or wrong API key (only when PYTHIA_API_KEY is set)",
    403: "A path outside PYTHIA_DATA_ROOT",
    404: "Unknown model, task, answer head, dataset or job",
    409: "The job has not finished, or its Idempotency-Key is being submitted",
    413: "Body, upload or decoded pixels over the limit",
    415: "Image format or content type not accepted",
    422: "A field missing or out of range (the message names it)",
    429: "Queue full or over the client's rate limit (Retry-After)",
    503: "Not ready, draining, model unavailable or Redis unreachable (Retry-After)",
    504: "No result within PYTHIA_REQUEST_TIMEOUT_S",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: these error statuses, each with the error body."""
    return {s: {"model": ErrorBody, "description": ERROR_STATUSES[s]} for s in statuses}


# -- request fields -------------------------------------------------------------------------------
class _Common(BaseModel):
    model_config = {"extra": "forbid"}

    model: str | None = Field(None, max_length=128)


class _Question(_Common):
    question: str
    top_k: int = Field(5, ge=1, le=100)
    dataset: str | None = Field(None, max_length=64)


class OCRToken(BaseModel):
    model_config = {"extra": "forbid"}

    word: str = Field(min_length=1, max_length=100)
    box: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # relative x1, y1, x2, y2

    @field_validator("box")
    @classmethod
    def _relative(cls, box: tuple[float, float, float, float]
                  ) -> tuple[float, float, float, float]:
        if not all(math.isfinite(v) and -0.01 <= v <= 1.01 for v in box):
            raise ValueError("box values must be relative coordinates in [0, 1]")
        return box


class VQAParams(_Question):
    pass


class TextVQAParams(_Question):
    ocr_tokens: list[OCRToken] | None = Field(None, max_length=200)


class CaptionParams(_Common):
    beam_size: int = Field(1, ge=1, le=10)
    max_length: int = Field(20, ge=1, le=50)


class Turn(BaseModel):
    model_config = {"extra": "forbid"}

    question: str = Field(max_length=1000)
    answer: str = Field(max_length=1000)


class DialogParams(_Common):
    question: str
    caption: str = Field("", max_length=1000)
    history: list[Turn] = Field(default_factory=list, max_length=20)
    options: list[str] | None = Field(None, min_length=1, max_length=100)


PARAMS: dict[str, type[_Common]] = {"vqa": VQAParams, "textvqa": TextVQAParams,
                                    "caption": CaptionParams, "dialog": DialogParams}
# Multipart text fields that carry JSON (lists and objects)
JSON_FIELDS = {"ocr_tokens", "history", "options"}
# A request's JSON holds at most this many values (keys, items, nested values), far over
# what any route takes (200 OCR tokens, 100 options, 20 turns): more is refused before
# validation, whose errors for each would cost far more memory than the body.
MAX_JSON_VALUES = 10_000
MAX_FIELD_ERRORS = 10  # validation errors named in one message


def _field_errors(exc: ValidationError | RequestValidationError) -> str:
    errors = exc.errors()
    parts = []
    for err in errors[:MAX_FIELD_ERRORS]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "request"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    if len(errors) > MAX_FIELD_ERRORS:
        parts.append(f"and {len(errors) - MAX_FIELD_ERRORS} more")
    return "; ".join(parts)


# -- body size limit ------------------------------------------------------------------------------
class BodyLimit:
    """ASGI middleware: request bodies over ``max_bytes`` get 413 (by Content-Length before
    anything is read, or as soon as a streamed body passes the limit)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > limit:
                    response = error_response(413, "payload_too_large",
                                              f"request body of {declared} bytes is over the "
                                              f"limit of {limit} bytes")
                    await response(scope, receive, send)
                    return
        seen = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, "payload_too_large",
                                   f"request body is over the limit of {limit} bytes")
            return message

        await self.app(scope, limited, send)


class RateLimiter:
    """Token buckets per client: ``capacity`` requests, refilled over ``period`` seconds.
    At most ``max_clients`` buckets are kept (the least recently seen are forgotten)."""

    def __init__(self, capacity: int, period: float, max_clients: int = 100_000) -> None:
        self.capacity, self.rate = float(capacity), capacity / period
        self.max_clients = max_clients
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 if the request may go, else the seconds until one token is back."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.pop(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait


TASK_PATHS = {"/vqa", "/textvqa", "/caption", "/dialog"}
RATE_LIMITED = {*TASK_PATHS, "/jobs"}


class Observe:
    """ASGI middleware: the API key check, in-flight count and request metrics (plain ASGI,
    not ``BaseHTTPMiddleware``: no extra task per request, and disconnects reach the route)."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServiceState) -> None:
        self.app, self.state = app, state
        key = state.settings.api_key
        self.key = key.get_secret_value().encode() if key is not None else None
        rate = state.settings.rate_limit
        self.limiter = RateLimiter(*parse_rate(rate)) if rate else None

    async def __call__(self, scope: MutableMapping[str, Any],
                       receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                       send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        metrics = self.state.metrics
        label = path if path in ROUTE_LABELS else "other"
        if self.key is not None and path not in OPEN_PATHS \
                and not path.startswith(DOCS_STATIC + "/") and not self._authorized(scope):
            response = error_response(401, "unauthorized", "missing or wrong API key: send "
                                      "'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                                      {"WWW-Authenticate": "Bearer"})
            metrics.requests.labels(label, "401").inc()
            await response(scope, receive, send)
            return
        if self.limiter is not None and path in RATE_LIMITED and scope["method"] == "POST":
            wait = self.limiter.take(self._client(scope))
            if wait > 0:
                response = error_response(
                    429, "rate_limited", f"over {self.state.settings.rate_limit} for this "
                    "client (PYTHIA_RATE_LIMIT)", {"Retry-After": str(max(1, math.ceil(wait)))})
                metrics.requests.labels(label, "429").inc()
                await response(scope, receive, send)
                return
        status = 500

        async def record(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        t0 = time.perf_counter()
        scope["pythia.arrival"] = time.monotonic()
        task = path in TASK_PATHS
        self.state.in_flight += 1
        self.state.task_in_flight += task
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, record)
        finally:
            self.state.in_flight -= 1
            self.state.task_in_flight -= task
            metrics.in_flight.dec()
            metrics.requests.labels(label, str(status)).inc()
            metrics.latency.labels(label).observe(time.perf_counter() - t0)

    @staticmethod
    def _client(scope: MutableMapping[str, Any]) -> str:
        """Who a request counts against: its API key (hashed, never kept in clear) when it
        sends one, else its address."""
        for name, value in scope.get("headers", ()):
            if name in (b"x-api-key", b"authorization"):
                return "key:" + hashlib.sha256(value).hexdigest()[:16]
        client = scope.get("client") or ("?", 0)
        return f"addr:{client[0]}"

    def _authorized(self, scope: MutableMapping[str, Any]) -> bool:
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"x-api-key" and not given:
                given = value.strip()
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                given = value[7:].strip()
        assert self.key is not None
        return bool(given) and hmac.compare_digest(given, self.key)


# -- metrics --------------------------------------------------------------------------------------
class Metrics:
    """Prometheus metrics in a registry of the app's own (several apps in one process stay
    apart)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pythia_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.latency = Histogram("pythia_request_seconds", "Request latency by route", ["route"],
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                          10, 30), registry=r)
        self.queue_depth = Gauge("pythia_queue_depth", "Requests queued per model", ["model"],
                                 registry=r)
        self.batch_size = Histogram("pythia_batch_size", "Items per model call", ["model"],
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.inference = Histogram("pythia_inference_seconds", "Model time per batch",
                                   ["model", "task"],
                                   buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                            0.5, 1, 2.5, 5), registry=r)
        self.in_flight = Gauge("pythia_requests_in_flight", "Requests being served",
                               registry=r)


def _depth_of(engine: Batcher) -> Callable[[], float]:
    return lambda: float(engine.depth)


# -- state ----------------------------------------------------------------------------------------
class ServiceState:
    """What the routes share: models, engines, the decoding pool, readiness."""

    def __init__(self, settings: Settings, models: Mapping[str, LoadedModel],
                 failed: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.models = dict(models)
        self.failed = dict(failed or {})  # model name -> why its release did not load
        self.metrics = Metrics()
        self.engines: dict[str, Batcher] = {}
        # PYTHIA_QUEUE=celery: requests go to workers through Redis; no engine here
        self.remote: CeleryClient | None = None
        self._local_jobs: LocalJobs | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.draining = False
        self.drain_started = math.inf  # time.monotonic() of the signal that began draining
        self.started = False
        self.in_flight = 0
        self.task_in_flight = 0  # requests on the task routes (the engines expect them)
        self._lock = threading.Lock()

    def start(self) -> None:
        s = self.settings
        self.pool = ThreadPoolExecutor(s.decode_threads, thread_name_prefix="decode")
        if s.queue == "celery":
            self.remote = CeleryClient(s)
        for name, entry in self.models.items():
            if self.remote is not None:
                continue
            if entry.runner is None:
                raise ValueError(f"model {name!r} was loaded without weights: the local queue "
                                 "runs models in this process")

            def on_batch(key: Any, size: int, seconds: float, name: str = name) -> None:
                self.metrics.batch_size.labels(name).observe(size)
                self.metrics.inference.labels(name, str(key[0])).observe(seconds)

            engine = Batcher(entry.runner.predict, max_batch_size=s.max_batch_size,
                             max_wait_ms=s.max_wait_ms, queue_size=s.queue_size, name=name,
                             on_batch=on_batch, expected=lambda: self.task_in_flight)
            self.engines[name] = engine.start()
            self.metrics.queue_depth.labels(name).set_function(_depth_of(engine))
        for entry in self.models.values():
            self.pool.submit(entry.front.warm_up)  # OCR engines load in the background
            if entry.runner is not None:  # one forward pass, so the first request is not slow
                self.pool.submit(entry.runner.warm_up, entry.front)
        self.started = True

    def begin_drain(self) -> None:
        """Readiness off; requests that arrive from now on are refused (503), those already
        here (even still uploading) are served."""
        if not self.draining:
            self.drain_started = time.monotonic()
            self.draining = True

    def refuses(self, request: Request) -> bool:
        """Whether ``request`` came after draining began."""
        arrived = float(request.scope.get("pythia.arrival", time.monotonic()))
        return self.draining and arrived >= self.drain_started

    def stop(self) -> None:
        """Drain: refuse new work, finish what is queued, stop the threads."""
        self.begin_drain()
        if self._local_jobs is not None:
            self._local_jobs.close()
        for engine in self.engines.values():
            engine.stop(drain=True, timeout=self.settings.request_timeout_s)
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def local_jobs(self) -> LocalJobs:
        with self._lock:
            if self._local_jobs is None:
                self._local_jobs = LocalJobs()
            return self._local_jobs

    def job_store(self) -> JobStore:
        if self.remote is not None:
            return self.remote.jobs
        return self.local_jobs().store

    async def ready(self) -> tuple[bool, str]:
        if self.draining:
            return False, "draining: the service is shutting down"
        if not self.started or not self.models:
            return False, "no model loaded yet"
        if self.remote is not None:
            if not await self.remote.reachable():
                return False, self.remote.last_error
            return True, "ready"
        dead = [n for n, e in self.engines.items() if not e.alive]
        if dead:
            return False, f"inference thread not running for {dead}"
        return True, "ready"

    def pick(self, task: str, name: str | None) -> LoadedModel:
        if name is not None:
            entry = self.models.get(name)
            if entry is None and name in self.failed:
                raise ApiError(503, "model_unavailable",
                               f"model {name!r} failed to load: {self.failed[name]}")
            if entry is None:
                raise ApiError(404, "model_not_found",
                               f"no model named {name!r}; loaded: {sorted(self.models)}")
            return entry
        for entry in self.models.values():
            if task in entry.front.tasks:
                return entry
        raise ApiError(404, "task_not_served",
                       f"no loaded model serves {task!r}; loaded: "
                       f"{ {n: list(m.front.tasks) for n, m in self.models.items()} }")


# -- request parsing ------------------------------------------------------------------------------
_BOUNDARY = re.compile(r'boundary=(?:"([^"]{1,70})"|([^;\s"]{1,70}))', re.IGNORECASE)
_DISPOSITION = re.compile(
    rb'^form-data(?:; name="([^"\\]{1,200})")(?:; filename="([^"\\]{0,255})")?$')
MAX_PARTS = 16


def fast_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes | str, bool]] | None:
    """The parts ``(name, value, is_file)`` of a plain multipart/form-data body, parsed with
    bytes operations (a tenth of python-multipart's cost per request); ``None`` for anything
    unusual (quoted-printable, odd headers, escapes, a missing final boundary, text that is
    not UTF-8, many parts), which the full parser then handles or refuses."""
    m = _BOUNDARY.search(content_type)
    if m is None:
        return None
    delim = b"--" + (m.group(1) or m.group(2)).encode("latin-1")
    if not body.startswith(delim):
        return None
    # maxsplit: a body of millions of tiny parts would otherwise become millions of objects
    chunks = body[len(delim):].split(b"\r\n" + delim, MAX_PARTS + 1)
    if len(chunks) > MAX_PARTS + 1 or not chunks[-1].startswith(b"--") \
            or chunks[-1][2:].strip(b"\r\n"):
        return None
    out: list[tuple[str, bytes | str, bool]] = []
    for raw in chunks[:-1]:
        if not raw.startswith(b"\r\n"):
            return None
        head, sep, data = raw[2:].partition(b"\r\n\r\n")
        if not sep:
            return None
        name: bytes | None = None
        filename: bytes | None = None
        for line in head.split(b"\r\n"):
            key, colon, value = line.partition(b":")
            key = key.strip().lower()
            if not colon:
                return None
            if key == b"content-disposition":
                d = _DISPOSITION.match(value.strip())
                if d is None:
                    return None
                name, filename = d.group(1), d.group(2)
            elif key != b"content-type":
                return None
        if name is None:
            return None
        try:
            text_name = name.decode("utf-8")
            value_out: bytes | str = data if filename is not None else data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        out.append((text_name, value_out, filename is not None))
    return out


async def _multipart_items(request: Request, max_upload: int
                           ) -> list[tuple[str, bytes | str, bool]]:
    """``(name, value, is_file)`` of a multipart body: the fast path, else Starlette's."""
    body = await request.body()  # bounded by BodyLimit
    parts = fast_multipart(body, request.headers.get("content-type", ""))
    if parts is not None:
        return parts
    try:  # Starlette re-reads the cached body
        form = await request.form(max_files=1, max_fields=MAX_PARTS, max_part_size=1024 * 1024)
    except ApiError:
        raise
    except Exception as exc:  # starlette/python-multipart parse errors
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
    items: list[tuple[str, bytes | str, bool]] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                items.append((key, await value.read(max_upload + 1), True))
            else:
                items.append((key, value, False))
    finally:
        await form.close()
    return items


async def _read_fields(request: Request, max_upload: int) -> tuple[bytes | str, dict[str, Any]]:
    """(image bytes or base64 text, the other fields) from a multipart or JSON body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        fields: dict[str, Any] = {}
        image: bytes | str | None = None
        for key, value, is_file in await _multipart_items(request, max_upload):
            if key == "image":
                image = value  # a file's bytes, or a text field: base64
            elif is_file:
                raise ApiError(422, "invalid_field", f"{key}: a file where text was expected")
            elif key in fields:
                raise ApiError(422, "invalid_field", f"{key}: given more than once")
            elif key in JSON_FIELDS:
                fields[key] = _parse_json(value, key)
            else:
                fields[key] = value
    elif ctype == "application/json":
        data = _parse_json(await request.body(), "the body")
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        image = data.pop("image", None)
        if image is not None and not isinstance(image, str):
            raise ApiError(422, "invalid_field", "image: base64 text expected")
        fields = data
    else:
        raise ApiError(415, "unsupported_content_type",
                       f"content type {ctype or 'none'!r}: send multipart/form-data (an "
                       "'image' file) or application/json (a base64 'image')")
    if image is None or (isinstance(image, (bytes, str)) and len(image) == 0):
        raise ApiError(422, "missing_image", "image: required (a file or base64 text)")
    return image, fields


def _parse_json(text: bytes | str, what: str) -> Any:
    """``json.loads`` of untrusted text; every failure is 400 ``invalid_json``: besides syntax,
    nesting deeper than Python's parser recurses (``RecursionError``), integers over Python's
    digit limit and bytes that are not UTF-8 (``ValueError``), more than ``MAX_JSON_VALUES``
    values, and lone surrogates (``"\\ud800"``: valid JSON syntax, but no Unicode text, which
    a response cannot encode)."""
    # Counted before parsing: a body of 900,000 "[]" takes Python's parser (its garbage
    # collector, in a process holding a model) seconds, on the event loop.
    opens = text.count(b"[") + text.count(b"{") if isinstance(text, bytes) \
        else text.count("[") + text.count("{")
    if opens > MAX_JSON_VALUES:
        raise ApiError(400, "invalid_json", f"{what} has more than {MAX_JSON_VALUES:,} "
                       "arrays and objects")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json",
                       f"{what} is not valid JSON ({exc.msg} at {exc.pos})") from None
    except RecursionError:
        raise ApiError(400, "invalid_json", f"{what} is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"{what} is not valid JSON: {exc}") from None
    stack = [data]  # iterative: the structure may be nested almost as deep as the C stack
    seen = 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_JSON_VALUES:
            raise ApiError(400, "invalid_json", f"{what} has more than {MAX_JSON_VALUES:,} "
                           "JSON values")
        if isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "invalid_json", f"{what} has a lone surrogate "
                               "(\\ud800-\\udfff): not Unicode text") from None
    return data


def _validate(task: str, fields: dict[str, Any], max_chars: int) -> _Common:
    try:
        params = PARAMS[task].model_validate(fields)
    except ValidationError as exc:
        raise ApiError(422, "invalid_field", _field_errors(exc)) from None
    question = getattr(params, "question", None)
    if question is not None:
        q = question.strip()
        if not q:
            raise ApiError(422, "empty_question", "question: must not be empty")
        if len(q) > max_chars:
            raise ApiError(422, "question_too_long",
                           f"question: {len(q)} characters, the limit is {max_chars}")
        params.question = q  # type: ignore[attr-defined]
    return params


def _decode(image: bytes | str, s: Settings, size: int) -> Image.Image:
    if isinstance(image, bytes):
        return decode_image(image, max_bytes=s.max_upload_bytes, max_pixels=s.max_image_pixels,
                            target_size=size)
    return decode_base64_image(image, max_bytes=s.max_upload_bytes,
                               max_pixels=s.max_image_pixels, target_size=size)


async def _until_disconnect(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]
                            ) -> None:
    """Returns when the client has gone (the body is already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")


# -- the app --------------------------------------------------------------------------------------
def create_app(settings: Settings, models: Mapping[str, LoadedModel],
               failed: Mapping[str, str] | None = None) -> FastAPI:
    """The app over already loaded ``models`` ({name: LoadedModel}); engines start with the
    app's lifespan and drain when it ends. ``failed`` ({name: error}) lists releases that did
    not load: the service runs with the others and says so in /readyz and /models."""
    state = ServiceState(settings, models, failed)

    async def reconcile_forever(remote: CeleryClient) -> None:
        """Celery mode: every few seconds, queue again job shards the broker lost."""
        idle = float(os.environ.get("PYTHIA_JOB_IDLE_S", "30"))
        loop = asyncio.get_running_loop()
        log = logging.getLogger("pythia.service")
        while True:
            await asyncio.sleep(max(1.0, idle / 3))
            try:
                for job_id, shards in await loop.run_in_executor(
                        state.pool, lambda: remote.reconcile_jobs(idle)):
                    log.warning("job %s: shards %s had no message left; queued again",
                                job_id, shards)
            except Exception as exc:  # Redis down: the next round tries again
                log.debug("job reconciliation skipped: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        reconciler = asyncio.ensure_future(reconcile_forever(state.remote)) \
            if state.remote is not None else None
        try:
            yield
        finally:
            if reconciler is not None:
                reconciler.cancel()
            await asyncio.get_running_loop().run_in_executor(None, state.stop)
            if state.remote is not None:
                await state.remote.close()

    # /docs with Swagger UI served from the package (fastapi-offline), not from a CDN.
    app = FastAPIOffline(title="Pythia", version="0.1.0", lifespan=lifespan, redoc_url=None,
                         static_url=DOCS_STATIC,
                         description="Visual question answering, TextVQA, captioning and "
                                     "visual dialog over Pythia release checkpoints.")
    app.state.service = state
    body_limit = math.ceil(settings.max_upload_bytes * 4 / 3) + JSON_OVERHEAD
    app.add_middleware(BodyLimit, max_bytes=body_limit)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_field", _field_errors(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail),
                              getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the client; the server log has it.
        logging.getLogger("pythia.service").exception("unexpected error on %s", request.url.path)
        return error_response(500, "internal_error", "internal error; see the server log")

    app.add_middleware(Observe, state=state)
    if settings.cors_origins:  # off unless configured
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"],
                           max_age=600)

    async def handle(task: str, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        s = settings
        image, fields = await _read_fields(request, s.max_upload_bytes)
        params = _validate(task, fields, s.max_question_chars)
        entry = state.pick(task, params.model)
        try:
            dataset = entry.front.check(task, getattr(params, "dataset", None))
        except TaskError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        if state.refuses(request):
            raise ApiError(503, "shutting_down", "the service is shutting down; retry on "
                           "another replica", {"Retry-After": "1"})
        remote = state.remote
        engine = state.engines.get(entry.name)
        if remote is not None:
            try:
                await remote.admit(task)
            except QueueUnavailable as exc:
                raise ApiError(503, "queue_unavailable", str(exc), {"Retry-After": "1"}
                               ) from None
            except QueueFull:
                raise _overloaded(entry.name, s) from None
        else:
            assert engine is not None
            if not engine.accepting:
                raise ApiError(503, "shutting_down", "the service is shutting down",
                               {"Retry-After": "1"})
            if engine.depth >= s.queue_size:
                raise _overloaded(entry.name, s)
        values = params.model_dump(exclude={"model"})
        values["dataset"] = dataset
        if task == "textvqa" and values.get("ocr_tokens") is not None:
            values["ocr_tokens"] = [{"word": t["word"], "box": list(t["box"])}
                                    for t in values["ocr_tokens"]]
        size = entry.front.transform.size
        if task == "textvqa" and values.get("ocr_tokens") is None:
            size = max(size, OCR_DECODE_SIZE)  # rapidocr needs the text legible
        loop = asyncio.get_running_loop()
        ticket = engine.announce() if engine is not None else None
        try:
            job: Job = await loop.run_in_executor(
                state.pool, lambda: entry.front.prepare(task, _decode(image, s, size), values))
        except ImageError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        except TaskError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        finally:
            if ticket is not None:
                ticket.close()
        submitted = time.perf_counter()
        deadline = time.monotonic() + s.request_timeout_s - (submitted - t0)
        if remote is not None:
            result, queued = await _await_remote(remote, task, entry.name, job, request,
                                                 deadline)
        else:
            assert engine is not None
            try:
                future = engine.submit(job, key=job.key, deadline=deadline)
            except Overloaded:
                raise _overloaded(entry.name, s) from None
            except ShuttingDown:
                raise ApiError(503, "shutting_down", "the service is shutting down",
                               {"Retry-After": "1"}) from None
            result = await _await_result(future, request, deadline)
            queued = job.started - submitted
        done = time.perf_counter()
        inference = float(result.pop("inference_ms", 0.0))
        batch = int(result.pop("batch_size", 1))
        body: dict[str, Any] = {"model": entry.name}
        if task in ("vqa", "textvqa", "dialog"):
            body["question"] = values["question"]
        if task in ("vqa", "textvqa"):
            body["dataset"] = dataset
        body.update(result)
        if task == "textvqa":
            answers = body.get("answers") or []
            body["copied"] = bool(answers and answers[0].get("copied"))
        body["timing_ms"] = {"queue": round(max(0.0, queued * 1000), 3),
                             "inference": inference,
                             "total": round((done - t0) * 1000, 3), "batch_size": batch}
        return JSONResponse(body)

    async def _await_remote(remote: CeleryClient, task: str, model: str, job: Job,
                            request: Request, deadline: float) -> tuple[dict[str, Any], float]:
        gone = asyncio.ensure_future(_until_disconnect(request.receive))
        try:
            return await remote.run(task, model, job, deadline, gone)
        except QueueUnavailable as exc:
            raise ApiError(503, "queue_unavailable", str(exc), {"Retry-After": "1"}) from None
        except RemoteError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        except ConnectionAbortedError:
            raise ApiError(499, "client_closed_request", "the client disconnected") from None
        except TimeoutError:
            raise ApiError(504, "deadline_exceeded",
                           f"no result within {settings.request_timeout_s} s "
                           "(PYTHIA_REQUEST_TIMEOUT_S)") from None
        finally:
            gone.cancel()

    async def _await_result(future: Future[Any], request: Request, deadline: float) -> Any:
        waiter = asyncio.wrap_future(future)
        gone = asyncio.ensure_future(_until_disconnect(request.receive))
        try:
            timeout = max(0.0, deadline - time.monotonic())
            done, _ = await asyncio.wait({waiter, gone}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if waiter in done:
                try:
                    return waiter.result()
                except DeadlineExceeded as exc:
                    raise ApiError(504, "deadline_exceeded", str(exc)) from None
                except ShuttingDown:
                    raise ApiError(503, "shutting_down", "the service is shutting down",
                                   {"Retry-After": "1"}) from None
                except TaskError as exc:
                    raise ApiError(exc.status, exc.code, exc.message) from None
            future.cancel()  # dropped from the queue if it has not started
            if gone in done:
                # Nobody reads this response; 499 is what proxies log for it.
                raise ApiError(499, "client_closed_request", "the client disconnected")
            raise ApiError(504, "deadline_exceeded",
                           f"no result within {settings.request_timeout_s} s "
                           "(PYTHIA_REQUEST_TIMEOUT_S)")
        finally:
            gone.cancel()
            if not waiter.done():
                waiter.cancel()

    def _overloaded(name: str, s: Settings) -> ApiError:
        return ApiError(429, "overloaded",
                        f"model {name!r} has {s.queue_size} requests queued "
                        "(PYTHIA_QUEUE_SIZE); retry shortly", {"Retry-After": "1"})

    async def vqa(request: Request) -> JSONResponse:
        """Answer a question about an image: top answers with scores."""
        return await handle("vqa", request)

    async def textvqa(request: Request) -> JSONResponse:
        """Answer reading the text in the image (OCR by rapidocr unless ocr_tokens given)."""
        return await handle("textvqa", request)

    async def caption(request: Request) -> JSONResponse:
        """Caption an image (greedy, or beam search with beam_size > 1)."""
        return await handle("caption", request)

    async def dialog(request: Request) -> JSONResponse:
        """Answer the next question of a dialog; the history travels with the request."""
        return await handle("dialog", request)

    for task, endpoint in (("vqa", vqa), ("textvqa", textvqa), ("caption", caption),
                           ("dialog", dialog)):
        app.add_api_route(f"/{task}", endpoint, methods=["POST"], name=task,
                          responses=_errors(400, 401, 404, 413, 415, 422, 429, 503, 504),
                          openapi_extra=_openapi_body(task, settings.max_question_chars))
        # Served by a plain Starlette route placed first (it only takes the Request, so
        # FastAPI's per-request dependency solving is skipped); the APIRoute documents it.
        app.router.routes.insert(0, Route(f"/{task}", endpoint, methods=["POST"],
                                          name=f"{task}_direct"))

    # -- batch-prediction jobs (service.jobs) --------------------------------------------------
    def _job_error(exc: JobError) -> ApiError:
        return ApiError(exc.status, exc.code, exc.message)

    async def _in_thread(fn: Callable[[], Any]) -> Any:
        return await asyncio.get_running_loop().run_in_executor(state.pool, fn)

    async def _job_meta(job_id: str) -> dict[str, Any]:
        if not JOB_ID.fullmatch(job_id):
            raise ApiError(404, "job_not_found", f"no job {job_id!r}")
        try:
            meta = await _in_thread(lambda: state.job_store().get(job_id))
        except REDIS_ERRORS as exc:
            raise ApiError(503, "queue_unavailable", f"Redis is unreachable: {exc}",
                           {"Retry-After": "1"}) from None
        if meta is None:
            raise ApiError(404, "job_not_found", f"no job {job_id!r} (jobs expire; local-mode "
                           "jobs live as long as the process)")
        return dict(meta)

    async def _claim_idempotency_key(key: str, body: Any, job_id: str) -> dict[str, Any] | None:
        """Bind ``key`` to ``job_id`` and this request body; the job bound earlier when the key
        was used before with the same body (a client's retry: replay it), ApiError 422 when
        with another body. A key whose job never reached the store (e.g. lost with Redis's
        last second before a crash) is taken over."""
        store = state.job_store()
        claim = hashlib.sha256(key.encode()).hexdigest()
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        try:
            for _ in range(2):
                earlier = await _in_thread(lambda: store.claim_key(claim, f"{job_id}:{digest}"))
                if earlier is None:
                    return None
                earlier_id, _, earlier_digest = earlier.partition(":")
                if earlier_digest != digest:
                    raise ApiError(422, "idempotency_key_reused", "this Idempotency-Key was "
                                   "sent before with a different job request")
                meta = await _in_thread(functools.partial(store.get, earlier_id))
                if meta is not None:
                    return dict(meta)
                await _in_thread(lambda: store.release_key(claim))
        except REDIS_ERRORS as exc:
            raise ApiError(503, "queue_unavailable", f"Redis is unreachable: {exc}",
                           {"Retry-After": "1"}) from None
        raise ApiError(409, "conflict", "another request with this Idempotency-Key is being "
                       "submitted; retry", {"Retry-After": "1"})

    @app.post("/jobs", status_code=202,
              responses={**_errors(400, 401, 403, 404, 409, 413, 422, 429, 503), 200: {
                  "description": "A retry with an Idempotency-Key already used: that job"}},
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": JobRequest.model_json_schema()}}},
                  "parameters": [{"in": "header", "name": "Idempotency-Key", "required": False,
                                  "description": "a client's key for this submission: a retry "
                                  "with the same key and body gets the same job (200)",
                                  "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}}],
                  "responses": {"202": {"content": {"application/json": {
                      "schema": JOB_STATUS_SCHEMA}}}, "200": {"content": {"application/json": {
                          "schema": JOB_STATUS_SCHEMA}}}}})
    async def create_job(request: Request) -> JSONResponse:
        """Start an EvalAI batch prediction over a dataset split under PYTHIA_DATA_ROOT."""
        data = _parse_json(await request.body(), "the body")
        if not isinstance(data, dict):
            raise ApiError(400, "invalid_json", "the body must be a JSON object")
        try:
            req = JobRequest.model_validate(data)
        except ValidationError as exc:
            raise ApiError(422, "invalid_field", _field_errors(exc)) from None
        key = request.headers.get("idempotency-key")
        if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
            raise ApiError(400, "invalid_header", "Idempotency-Key must be 1 to 255 visible "
                           "ASCII characters")
        if state.refuses(request):
            raise ApiError(503, "shutting_down", "the service is shutting down",
                           {"Retry-After": "1"})
        if TASK_OF[req.dataset] != req.task:
            raise ApiError(422, "invalid_field", f"task {req.task!r} does not predict "
                           f"{req.dataset} (that is {TASK_OF[req.dataset]!r})")
        entry = state.pick(req.task, req.model)
        try:
            entry.front.check(req.task, req.dataset if entry.front.family == "multitask"
                              else None)
            meta = await _in_thread(lambda: plan_job(req, entry.front,
                                                     Path(settings.data_root), entry.name))
        except TaskError as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        except JobError as exc:
            raise _job_error(exc) from None
        if key is not None:
            replay = await _claim_idempotency_key(key, data, meta["job_id"])
            if replay is not None:
                return JSONResponse(public_status(replay), status_code=200, headers={
                    "Location": f"/jobs/{replay['job_id']}", "Idempotent-Replayed": "true"})
        if state.remote is not None:
            remote = state.remote
            try:
                await _in_thread(lambda: remote.submit_job(meta))
            except REDIS_ERRORS as exc:
                raise ApiError(503, "queue_unavailable", f"Redis is unreachable: {exc}",
                               {"Retry-After": "1"}) from None
        else:
            assert entry.runner is not None
            state.local_jobs().submit(meta, entry.runner.predictor)
        return JSONResponse(public_status(meta), status_code=202,
                            headers={"Location": f"/jobs/{meta['job_id']}"})

    @app.get("/jobs/{job_id}", responses=_errors(401, 404, 422, 503),
             openapi_extra={"responses": {"200": {"content": {"application/json": {
                 "schema": JOB_STATUS_SCHEMA}}}}})
    async def job_status(job_id: str) -> dict[str, Any]:
        """A job's status and progress (done / total items)."""
        return public_status(await _job_meta(job_id))

    @app.get("/jobs/{job_id}/result", responses=_errors(401, 404, 409, 422, 503),
             openapi_extra={"responses": {"200": {"content": {"application/json": {
                 "schema": {"type": "array", "items": {"type": "object"}}}}}}})
    async def job_result(job_id: str) -> StreamingResponse:
        """The EvalAI result file of a finished job, streamed."""
        meta = await _job_meta(job_id)
        if meta["status"] != "done":
            raise ApiError(409, "job_not_done", f"job {job_id} is {meta['status']}"
                           + (f": {meta['error']}" if meta.get("error") else ""))
        name = f"{meta['dataset']}_{meta['split']}_{job_id[:8]}.json"
        return StreamingResponse(stream_result(state.job_store(), job_id, int(meta["shards"])),
                                 media_type="application/json",
                                 headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @app.get("/models", responses=_errors(401))
    async def list_models() -> dict[str, Any]:
        """The loaded models: tasks, answer heads, version, metrics at export."""
        return {"models": [m.info() for m in state.models.values()],
                "failed": [{"name": n, "error": e} for n, e in sorted(state.failed.items())]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses=_errors(503))
    async def readyz() -> JSONResponse:
        """Readiness: 503 until the models are loaded and their engines run, and while
        draining."""
        ok, why = await state.ready()
        if not ok:
            return error_response(503, "not_ready", why, {"Retry-After": "1"})
        body: dict[str, Any] = {"status": "degraded" if state.failed else "ready",
                                "models": sorted(state.models), "queue": settings.queue}
        if state.failed:
            body["failed"] = dict(sorted(state.failed.items()))
        return JSONResponse(body)

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: {
        "description": ERROR_STATUSES[401],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}}})
    async def metrics() -> Response:
        """Prometheus text exposition."""
        return Response(generate_latest(state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        page = STATIC / "index.html"
        if not page.is_file():
            return HTMLResponse("<h1>Pythia</h1><p>See <a href='/docs'>/docs</a>.</p>")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    return app


def _openapi_body(task: str, max_question_chars: int) -> dict[str, Any]:
    """The request body and the 200 response of a task route in the OpenAPI schema (the
    routes parse the body themselves, to take both multipart and JSON). ``$defs`` are
    inlined (a ``#/$defs`` reference would point at the root of the OpenAPI document); a
    multipart field cannot be null, and its list fields are JSON text (``encoding``); a
    question is not blank and within PYTHIA_MAX_QUESTION_CHARS (``_validate``)."""
    schema = PARAMS[task].model_json_schema()
    props = _inline_defs(dict(schema.get("properties", {})), schema.get("$defs", {}))
    if "question" in props:
        props["question"] = {**props["question"], "minLength": 1,
                             "maxLength": max_question_chars, "pattern": r"\S"}
    required = ["image", *schema.get("required", [])]
    multipart = {**{k: _not_null(v) for k, v in props.items()},
                 "image": {"type": "string", "format": "binary",
                           "description": "the image file (JPEG, PNG, WebP, GIF or BMP)"}}
    encoding = {k: {"contentType": "application/json"} for k in props if k in JSON_FIELDS}
    encoding["image"] = {"contentType": "image/jpeg, image/png, image/webp, image/gif, "
                                        "image/bmp, application/octet-stream"}
    as_json = {**props, "image": {"type": "string", "format": "byte",
                                  "description": "the image file, base64 (optionally a "
                                                 "data:image/...;base64, URL)"}}
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": multipart,
                                           "required": required},
                                "encoding": encoding},
        "application/json": {"schema": {"type": "object", "properties": as_json,
                                        "required": required}},
    }}, "responses": {"200": {"description": "The result", "content": {"application/json": {
        "schema": _RESULT_SCHEMAS[task]}}}}}


def _inline_defs(node: Any, defs: Mapping[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X"}`` replaced by ``defs["X"]`` (the request
    models are not recursive)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_defs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_defs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_defs(v, defs) for v in node]
    return node


def _not_null(prop: dict[str, Any]) -> dict[str, Any]:
    """A multipart field's schema: ``anyOf [X, null]`` -> ``X`` (a form field is never null)."""
    options = [o for o in prop.get("anyOf", ()) if o.get("type") != "null"]
    if len(options) != 1:
        return prop
    rest = {k: v for k, v in prop.items() if k not in ("anyOf", "default")}
    return {**rest, **options[0]}


def _object(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props}


_NUMBER = {"type": "number"}
_TEXT = {"type": "string"}
_TIMING = _object(["queue", "inference", "total", "batch_size"], queue=_NUMBER,
                  inference=_NUMBER, total=_NUMBER, batch_size={"type": "integer"})
_ANSWERS = {"type": "array", "items": _object(["answer", "score"], answer=_TEXT,
                                                score=_NUMBER)}
_RESULT_SCHEMAS: dict[str, dict[str, Any]] = {
    "vqa": _object(["model", "question", "dataset", "answers", "timing_ms"], model=_TEXT,
                   question=_TEXT, dataset=_TEXT, answers=_ANSWERS, timing_ms=_TIMING),
    "textvqa": _object(
        ["model", "question", "dataset", "answers", "ocr_tokens", "copied", "timing_ms"],
        model=_TEXT, question=_TEXT, dataset=_TEXT,
        answers={"type": "array", "items": _object(["answer", "score", "copied"],
                                                   answer=_TEXT, score=_NUMBER,
                                                   copied={"type": "boolean"})},
        ocr_tokens={"type": "array", "items": _TEXT}, copied={"type": "boolean"},
        timing_ms=_TIMING),
    "caption": _object(["model", "caption", "beams", "timing_ms"], model=_TEXT, caption=_TEXT,
                       beams={"type": "array", "items": _object(["caption", "score"],
                                                                caption=_TEXT, score=_NUMBER)},
                       timing_ms=_TIMING),
    "dialog": _object(["model", "question", "answer", "timing_ms"], model=_TEXT,
                      question=_TEXT, answer=_TEXT, ranking=_ANSWERS, timing_ms=_TIMING),
}
JOB_STATUS_SCHEMA = _object(
    ["job_id", "status", "progress", "task", "dataset", "split", "model"],
    job_id=_TEXT, status=_TEXT,
    progress=_object(["done", "total"], done={"type": "integer"}, total={"type": "integer"}),
    task=_TEXT, dataset=_TEXT, split=_TEXT, model=_TEXT)

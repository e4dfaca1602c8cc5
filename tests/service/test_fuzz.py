"""Property-based fuzzing of every route from the app's own OpenAPI schema (schemathesis, over
real HTTP to a live server): valid and schema-violating requests, as multipart and as JSON on
the task routes, with real images (every allowed format and mode, some corrupted) next to
random bytes. Every response must be

* never a 5xx (the 503 and 504 the service documents are not expected here: the model is
  loaded, nothing is draining, deadlines are long);
* a status the schema documents for the operation, with the documented content type and,
  where the schema documents the body, a body that conforms to it;
* for a 4xx, exactly ``{"error": {"code", "message"}}``.

The number of examples per operation is bounded (``EXAMPLES``) so the file runs in well under
a minute; ``test_both_body_encodings_were_fuzzed`` checks that both media types of every
task route were exercised."""

from __future__ import annotations

import base64
import collections
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import LiveServer

EXAMPLES = 40  # per operation, besides schemathesis's deterministic coverage cases
TASKS = ("vqa", "textvqa", "caption", "dialog")
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP", "image/gif": "GIF",
           "image/bmp": "BMP"}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


def _settings() -> Settings:
    return Settings(device="cpu", max_upload_bytes=300_000, max_image_pixels=1_000_000,
                    request_timeout_s=120, data_root=Path("/nonexistent-pythia-data"))


# The schema does not depend on the loaded models: it is taken from an app without any.
schema = schemathesis.openapi.from_dict(create_app(_settings(), {}).openapi())
SEEN: dict[str, set[str]] = collections.defaultdict(set)  # route -> media types sent


# -- images ---------------------------------------------------------------------------------------
def _encode(fmt: str, mode: str, size: tuple[int, int], colour: int, cut: int) -> bytes:
    img = Image.new(mode, size, colour if mode in ("L", "P", "1", "I;16") else
                    tuple((colour * (i + 3)) % 256 for i in range(len(mode))))
    buf = io.BytesIO()
    try:
        img.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):  # a mode the format cannot store
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format=fmt)
    data = buf.getvalue()
    return data[: max(1, len(data) - cut)] if cut else data  # cut > 0: a truncated file


def images(fmt: str) -> st.SearchStrategy[bytes]:
    """Real images of ``fmt`` (any mode, 1..96 px a side), now and then truncated."""
    return st.builds(
        _encode, st.just(fmt),
        st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "1", "I;16", "CMYK"]),
        st.tuples(st.integers(1, 96), st.integers(1, 96)), st.integers(0, 255),
        st.one_of(st.just(0), st.just(0), st.just(0), st.integers(1, 400)))


ANY_IMAGE = st.one_of(*(images(f) for f in FORMATS.values()))
for media, fmt in FORMATS.items():
    schemathesis.openapi.media_type(media, images(fmt))
# The JSON bodies' base64 image (format "byte"): a real image, or any bytes.
schemathesis.openapi.format("byte", st.one_of(ANY_IMAGE, ANY_IMAGE, st.binary(max_size=64))
                            .map(lambda b: base64.b64encode(b).decode()))


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(demo_model: Any) -> Iterator[LiveServer]:
    live = LiveServer(create_app(_settings(), {"demo": demo_model})).start()
    yield live
    live.stop()


# -- tests ----------------------------------------------------------------------------------------
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
def test_every_route(case: schemathesis.Case, server: LiveServer) -> None:
    if case.media_type:
        SEEN[case.path].add(case.media_type)
    response = case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=60)
    assert response.status_code < 500, response.text[:500]
    if 400 <= response.status_code < 500:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"code", "message"}, body
        assert body["error"]["code"] and body["error"]["message"], body
        assert "Traceback" not in body["error"]["message"]


def test_both_body_encodings_were_fuzzed() -> None:
    if not SEEN:
        pytest.skip("test_every_route did not run (deselected)")
    for task in TASKS:
        assert {"multipart/form-data", "application/json"} <= SEEN[f"/{task}"], (task, SEEN)


def test_the_server_still_serves_after_fuzzing(server: LiveServer, image_bytes: bytes) -> None:
    with httpx.Client(timeout=30) as c:
        r = c.post(f"{server.url}/vqa", files={"image": ("a.jpg", image_bytes)},
                   data={"question": "what color is the circle?"})
        assert r.status_code == 200, r.text
        assert 'status="500"' not in c.get(f"{server.url}/metrics").text

"""The bad-input catalogue over real HTTP: each case gets its 4xx status and a JSON error
``{"error": {"code", "message"}}``, never a 500 or a stack trace, and the server keeps
serving afterwards."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.service.conftest import LiveServer


def _png(img: Image.Image, fmt: str = "PNG", **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert isinstance(message, str) and message and "Traceback" not in message
    return dict(body["error"])


@pytest.fixture(scope="module")
def server(demo_model: Any) -> Iterator[LiveServer]:
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(device="cpu", max_upload_bytes=200_000, max_image_pixels=1_000_000,
                        max_question_chars=100)
    live = LiveServer(create_app(settings, {"demo": demo_model})).start()
    yield live
    live.stop()


def post(http: httpx.Client, server: LiveServer, image: bytes | None,
         route: str = "vqa", **fields: Any) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in fields.items()}
    files = {"image": ("upload", image, "application/octet-stream")} if image is not None \
        else None
    if files is None:
        data.setdefault("_", "")  # still multipart
        return http.post(f"{server.url}/{route}", data=data,
                         files={"other": ("x", b"1", "text/plain")})
    return http.post(f"{server.url}/{route}", files=files, data=data)


Q = {"question": "what color is the circle?"}


def test_uploads_over_the_limit(server: LiveServer, http: httpx.Client) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    big = _png(Image.fromarray(noise))  # ~480 KB: over the body limit itself
    _error(post(http, server, big, **Q), 413, "payload_too_large")
    small_noise = np.random.default_rng(1).integers(0, 255, (270, 270, 3), dtype=np.uint8)
    middling = _png(Image.fromarray(small_noise))  # over max_upload, under the body limit
    assert 200_000 < len(middling) < 200_000 * 4 / 3 + 65536
    _error(post(http, server, middling, **Q), 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the streamed count stops it
        for _ in range(40):
            yield b"x" * 65536

    r = http.post(f"{server.url}/vqa", content=chunks(),
                  headers={"content-type": "application/json"})
    _error(r, 413, "payload_too_large")


def test_decompression_bomb(server: LiveServer, http: httpx.Client) -> None:
    bomb = _png(Image.new("1", (5000, 5000)))  # a few KB, 25 M pixels
    assert len(bomb) < 100_000
    err = _error(post(http, server, bomb, **Q), 413, "image_too_large")
    assert "25000000" in err["message"].replace(",", "")


@pytest.mark.parametrize("fmt", ["TIFF", "ICO", "PDF"])
def test_formats_not_allowed(server: LiveServer, http: httpx.Client, fmt: str) -> None:
    data = _png(Image.new("RGB", (32, 32), "red"), fmt)
    _error(post(http, server, data, **Q), 415, "unsupported_media_type")


def test_garbage_and_truncated_images(server: LiveServer, http: httpx.Client,
                                      image_bytes: bytes) -> None:
    _error(post(http, server, b"\x00\x01garbage" * 50, **Q), 415, "unsupported_media_type")
    _error(post(http, server, image_bytes[: len(image_bytes) // 2], **Q), 422, "invalid_image")
    _error(post(http, server, b"", **Q), 422, "missing_image")


@pytest.mark.parametrize("make", [
    lambda: _png(Image.new("RGB", (48, 40), "blue"), "GIF"),
    lambda: _png(Image.new("RGBA", (48, 40), (0, 0, 255, 128)), "WEBP"),
    lambda: _png(Image.new("RGB", (48, 40), "blue"), "BMP"),
    lambda: _png(Image.new("CMYK", (48, 40), (0, 0, 0, 0)), "JPEG"),
    lambda: _png(Image.new("LA", (48, 40), (80, 200))),
    lambda: _png(Image.new("I;16", (48, 40), 40000)),
    lambda: _png(Image.new("L", (48, 40), 30)),
    lambda: _png(Image.new("P", (48, 40), 3)),
], ids=["gif", "webp-rgba", "bmp", "jpeg-cmyk", "png-la", "png-16bit", "png-l", "png-p"])
def test_accepted_formats_and_modes(server: LiveServer, http: httpx.Client,
                                    make: Callable[[], bytes]) -> None:
    r = post(http, server, make(), **Q)
    assert r.status_code == 200, r.text
    assert len(r.json()["answers"]) == 5


def test_question_checks(server: LiveServer, http: httpx.Client, image_bytes: bytes) -> None:
    _error(post(http, server, image_bytes, question=""), 422, "empty_question")
    _error(post(http, server, image_bytes, question="   \n "), 422, "empty_question")
    _error(post(http, server, image_bytes, question="why " * 30), 422, "question_too_long")
    err = _error(post(http, server, image_bytes), 422, "invalid_field")
    assert "question" in err["message"]


def test_field_checks(server: LiveServer, http: httpx.Client, image_bytes: bytes) -> None:
    for bad in ("0", "101", "abc"):
        err = _error(post(http, server, image_bytes, top_k=bad, **Q), 422, "invalid_field")
        assert "top_k" in err["message"]
    err = _error(post(http, server, image_bytes, colour="red", **Q), 422, "invalid_field")
    assert "colour" in err["message"]
    _error(post(http, server, image_bytes, route="textvqa", ocr_tokens="[{", **Q), 400,
           "invalid_json")
    err = _error(post(http, server, image_bytes, route="textvqa",
                      ocr_tokens=[{"word": "a", "box": [0, 0, 9, 9]}], **Q), 422,
                 "invalid_field")
    assert "box" in err["message"]
    _error(post(http, server, image_bytes, route="caption", beam_size=99), 422,
           "invalid_field")
    _error(post(http, server, image_bytes, route="dialog", history={"q": 1}, **Q), 422,
           "invalid_field")


def test_json_body_checks(server: LiveServer, http: httpx.Client, image_bytes: bytes) -> None:
    url = f"{server.url}/vqa"
    headers = {"content-type": "application/json"}
    _error(http.post(url, content=b"{not json", headers=headers), 400, "invalid_json")
    _error(http.post(url, content=b"[1, 2]", headers=headers), 400, "invalid_json")
    _error(http.post(url, content=b"\xff\xfe", headers=headers), 400, "invalid_json")
    _error(http.post(url, json={"image": "@@@not base64@@@", **Q}), 400, "invalid_base64")
    _error(http.post(url, json={"image": 12, **Q}), 422, "invalid_field")
    _error(http.post(url, json=Q), 422, "missing_image")
    good = base64.b64encode(image_bytes).decode()
    assert http.post(url, json={"image": f"data:image/jpeg;base64,{good}", **Q}
                     ).status_code == 200
    _error(http.post(url, content=b"question=x", headers={"content-type": "text/plain"}),
           415, "unsupported_content_type")
    _error(http.post(url, content=b"--xx\r\ngarbage", headers={
        "content-type": "multipart/form-data"}), 400, "invalid_multipart")  # no boundary


def test_unknown_model_task_route(server: LiveServer, http: httpx.Client,
                                  image_bytes: bytes) -> None:
    err = _error(post(http, server, image_bytes, model="nope", **Q), 404, "model_not_found")
    assert "demo" in err["message"]
    _error(post(http, server, image_bytes, dataset="gqa", **Q), 404, "dataset_not_served")
    _error(http.post(f"{server.url}/segment"), 404, "not_found")
    _error(http.get(f"{server.url}/vqa"), 405, "method_not_allowed")


def test_server_unharmed(server: LiveServer, http: httpx.Client, image_bytes: bytes) -> None:
    r = post(http, server, image_bytes, **Q)
    assert r.status_code == 200
    metrics = http.get(f"{server.url}/metrics").text
    assert 'status="500"' not in metrics


def test_api_key(serve: Callable[..., LiveServer], image_bytes: bytes) -> None:
    live = serve(api_key="s3cret")
    with httpx.Client(timeout=30) as c:
        _error(post(c, live, image_bytes, **Q), 401, "unauthorized")
        _error(c.get(f"{live.url}/models", headers={"x-api-key": "wrong"}), 401, "unauthorized")
        assert c.get(f"{live.url}/healthz").status_code == 200
        assert c.get(f"{live.url}/readyz").status_code == 200
        ok = c.post(f"{live.url}/vqa", files={"image": ("a.jpg", image_bytes)}, data=Q,
                    headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert c.get(f"{live.url}/models", headers={"x-api-key": "s3cret"}).status_code == 200

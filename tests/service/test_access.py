"""Access controls: per-client rate limiting, CORS off unless configured, the API key never
appears in logs or settings dumps."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from service.settings import Settings, parse_rate
from tests.service.conftest import LiveServer

Q = {"question": "what color is the circle?"}


def _vqa(c: httpx.Client, server: LiveServer, image: bytes, **headers: str) -> httpx.Response:
    return c.post(f"{server.url}/vqa", files={"image": ("a.jpg", image)}, data=Q,
                  headers=headers)


def test_rate_limit_per_client(serve: Callable[..., LiveServer], image_bytes: bytes) -> None:
    server = serve(rate_limit="3/minute")
    with httpx.Client(timeout=30) as c:
        assert [_vqa(c, server, image_bytes, **{"x-api-key": "alice"}).status_code
                for _ in range(3)] == [200, 200, 200]
        r = _vqa(c, server, image_bytes, **{"x-api-key": "alice"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 20
        # another client has its own budget; reads are not limited
        assert _vqa(c, server, image_bytes, **{"x-api-key": "bob"}).status_code == 200
        assert c.get(f"{server.url}/models").status_code == 200
        metrics = c.get(f"{server.url}/metrics").text
        assert 'pythia_requests_total{route="/vqa",status="429"} 1.0' in metrics


def test_rate_setting_is_validated() -> None:
    assert parse_rate("120/minute") == (120, 60.0) and parse_rate("5/seconds") == (5, 1.0)
    for bad in ("fast", "0/minute", "10/week", "x/hour"):
        with pytest.raises(ValueError, match="rate_limit"):
            Settings(rate_limit=bad)


def test_cors_off_by_default_and_configurable(serve: Callable[..., LiveServer]) -> None:
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    plain = serve()
    allowed = serve(cors_origins="https://app.example")
    with httpx.Client(timeout=30) as c:
        r = c.options(f"{plain.url}/vqa", headers=preflight)
        assert "access-control-allow-origin" not in r.headers
        r = c.options(f"{allowed.url}/vqa", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.options(f"{allowed.url}/vqa", headers={**preflight,
                                                      "origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_api_key_never_logged(serve: Callable[..., LiveServer], image_bytes: bytes,
                              caplog: pytest.LogCaptureFixture) -> None:
    secret = "k-93f1c0de-very-secret"
    caplog.set_level(logging.DEBUG)
    settings = Settings(api_key=secret)
    assert secret not in repr(settings) and secret not in str(settings.model_dump())
    server = serve(api_key=secret)
    with httpx.Client(timeout=30) as c:
        assert _vqa(c, server, image_bytes, authorization=f"Bearer {secret}").status_code == 200
        r = _vqa(c, server, image_bytes, authorization="Bearer wrong-" + secret)
        assert r.status_code == 401 and secret not in r.text
    assert all(secret not in rec.getMessage() for rec in caplog.records)

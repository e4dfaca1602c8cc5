"""The fast multipart parser agrees with python-multipart on what clients send, and declines
(returns None) whatever it does not fully understand, leaving it to the full parser."""

from __future__ import annotations

import httpx
import pytest

from service.app import fast_multipart


def _encode(files: dict[str, tuple[str, bytes, str]], data: dict[str, str]
            ) -> tuple[bytes, str]:
    req = httpx.Request("POST", "http://x/vqa", files=files, data=data)
    return req.read(), req.headers["content-type"]


def test_agrees_with_what_httpx_sends() -> None:
    image = bytes(range(256)) * 40 + b"\r\n--not-the-boundary\r\n"
    body, ctype = _encode({"image": ("a.jpg", image, "image/jpeg")},
                          {"question": "what colour is the ünïcode circle?", "top_k": "3"})
    parts = fast_multipart(body, ctype)
    assert parts is not None
    assert {(n, f) for n, _, f in parts} == {("image", True), ("question", False),
                                             ("top_k", False)}
    values = {n: v for n, v, _ in parts}
    assert values["image"] == image and values["top_k"] == "3"
    assert values["question"] == "what colour is the ünïcode circle?"


@pytest.mark.parametrize("mangle", [
    lambda b: b.replace(b"Content-Disposition", b"Content-Transfer-Encoding: base64\r\n"
                        b"Content-Disposition", 1),                     # odd header
    lambda b: b[: b.rindex(b"--")],                                     # no final boundary
    lambda b: b.replace(b'name="question"', b'name="qu\\"estion"'),      # an escape
    lambda b: b.replace(b"circle", b"\xff\xfe"),                         # text not UTF-8
    lambda b: b"preamble\r\n" + b,                                      # a preamble
])
def test_declines_the_unusual(mangle: object) -> None:
    body, ctype = _encode({"image": ("a.jpg", b"\xff\xd8jpeg", "image/jpeg")},
                          {"question": "what circle?"})
    assert fast_multipart(body, ctype) is not None
    assert fast_multipart(mangle(body), ctype) is None  # type: ignore[operator]


def test_declines_without_boundary_or_with_many_parts() -> None:
    body, ctype = _encode({}, {f"f{i}": "x" for i in range(20)})
    assert fast_multipart(body, ctype) is None
    assert fast_multipart(body, "multipart/form-data") is None

"""Hostile inputs over real HTTP: decompression bombs (PNG, JPEG, BMP, GIF, WebP), huge
dimensions in tiny files, truncated files, polyglots, animations with thousands of frames,
absurd or broken EXIF, 16-bit variants, malformed multipart bodies, oversized, deeply nested
or not-quite-JSON bodies, invalid text, NUL bytes and huge headers.

Each case is refused with a 4xx (a JSON ``{"error": {"code", "message"}}`` when the app
answers; a few header cases are refused by the HTTP parser itself, in plain text) or served
with 200 where it is a valid input, within ``PER_REQUEST_S``; the server answers a good
request after each case; and a batch of every case, three times over, grows the process's
resident memory by less than ``RSS_GROWTH_MIB`` (the server runs in this process) and never
peaks more than ``RSS_PEAK_MIB`` above where it started.

Not repeated here: the basic bad-input catalogue (test_bad_input.py) and the decoder's unit
tests and byte fuzzing (test_images.py)."""

from __future__ import annotations

import base64
import functools
import gzip
import io
import json
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.service.conftest import LiveServer

# PIL warns about the broken EXIF blocks below (from the server's decoding threads)
pytestmark = [pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
              pytest.mark.filterwarnings("ignore:Tag data larger than file:UserWarning")]

PER_REQUEST_S = 8.0  # a hostile request is answered within this (most take milliseconds)
RSS_GROWTH_MIB = 64  # resident memory kept after the batch, over the warmed-up baseline
RSS_PEAK_MIB = 256  # resident memory peak during the batch, over where it started
MAX_UPLOAD = 2_000_000
MAX_PIXELS = 4_000_000
BODY_LIMIT = -(-MAX_UPLOAD * 4 // 3) + 64 * 1024  # service.app: base64 + JSON overhead
Q = {"question": "what color is the circle?"}


# -- files ----------------------------------------------------------------------------------------
def _save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, *, depth: int = 8, colour: int = 2,
         extra: bytes = b"") -> bytes:
    """A PNG with the given IHDR fields and one IDAT chunk (``extra`` chunks before it)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def _png_rows(width: int, height: int, pixel: bytes) -> bytes:
    return zlib.compress((b"\x00" + pixel * width) * height)


@functools.cache
def _png_bomb() -> bytes:
    """A real deflate bomb: 30000x30000 1-bit, 112 MB of scanlines in ~110 KB."""
    rows = 30000 * (1 + 30000 // 8)
    return _png(30000, 30000, zlib.compress(b"\x00" * rows, 9), depth=1, colour=0)


@functools.cache
def _small_png() -> bytes:
    return _save(Image.new("RGB", (64, 64), "blue"), "PNG")


def _png_with_chunk_bomb(kind: bytes) -> bytes:
    """A valid 64x64 PNG with a text/ICC chunk that inflates to 50 MB, before its IDAT."""
    small = _small_png()
    head = 8 + 25  # signature + IHDR chunk
    bomb = _chunk(kind, b"k\x00\x00" + zlib.compress(b"A" * 50_000_000, 9))
    return small[:head] + bomb + small[head:]


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose frame header (SOF0) claims ``width`` x ``height``."""
    data = bytearray(_save(Image.new("RGB", (16, 16), "red"), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _gif(frames: int, side: int = 64, screen: int | None = None) -> bytes:
    """A GIF of ``frames`` 1x1 frames on a ``screen`` x ``screen`` logical screen."""
    screen = screen or side
    head = (b"GIF89a" + struct.pack("<HH", screen, screen) + b"\x80\x00\x00"
            + b"\x00\x00\x00\xff\xff\xff")
    frame = (b"\x21\xf9\x04\x04\x0a\x00\x00\x00"  # graphic control: 0.1 s
             + b"\x2c" + struct.pack("<HHHH", 0, 0, 1, 1) + b"\x00"  # image descriptor
             + b"\x02\x02\x44\x01\x00")  # LZW data of one pixel
    return head + frame * frames + b"\x3b"


def _apng_claiming_frames(n: int) -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    data = bytearray(_save(frames[0], "PNG", save_all=True, append_images=frames[1:]))
    at = data.index(b"acTL")
    data[at + 4: at + 8] = struct.pack(">I", n)
    data[at + 12: at + 16] = struct.pack(">I", zlib.crc32(bytes(data[at: at + 12])))
    return bytes(data)


def _webp_canvas(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" \
        + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _bmp_claiming(width: int, height: int) -> bytes:
    return (b"BM" + struct.pack("<IHHI", 54, 0, 0, 54)
            + struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 0, 0, 0, 0))


def _jpeg_exif(orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[274] = orientation
    return _save(Image.new("RGB", (40, 30), "red"), fmt, exif=exif.tobytes())


def _jpeg_with_app1(payload: bytes) -> bytes:
    """A valid JPEG with an APP1 segment of ``payload`` right after SOI."""
    jpeg = _save(Image.new("RGB", (40, 30), "green"), "JPEG")
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


SCRIPT = b"<script>alert(document.cookie)</script>"
HTML = b"<!DOCTYPE html><html><body>" + SCRIPT + b"</body></html>"


# -- requests -------------------------------------------------------------------------------------
Send = Callable[[httpx.Client, str], httpx.Response]


def upload(data: bytes, route: str = "vqa", filename: str = "upload.jpg",
           ctype: str = "image/jpeg", headers: Any = None) -> Send:
    return lambda c, url: c.post(f"{url}/{route}", files={"image": (filename, data, ctype)},
                                 data=Q, headers=headers)


def raw(body: bytes, ctype: str, route: str = "vqa", **headers: str) -> Send:
    return lambda c, url: c.post(f"{url}/{route}", content=body,
                                 headers={"content-type": ctype, **headers})


def as_json(text: str | bytes, route: str = "vqa") -> Send:
    body = text.encode() if isinstance(text, str) else text
    return raw(body, "application/json", route)


def _part(name: str | bytes, value: bytes, *, filename: str | None = None,
          nl: bytes = b"\r\n") -> bytes:
    name_b = name.encode() if isinstance(name, str) else name
    disp = b'Content-Disposition: form-data; name="' + name_b + b'"'
    if filename is not None:
        disp += b'; filename="' + filename.encode() + b'"' + nl \
            + b"Content-Type: application/octet-stream"
    return disp + nl + nl + value


def multipart(parts: list[bytes], boundary: bytes = b"b0undary", *, close: bool = True,
              nl: bytes = b"\r\n", header_boundary: bytes | None = None,
              ctype_extra: str = "") -> Send:
    """A hand-built multipart body (so it can be wrong in every way)."""
    body = b"".join(b"--" + boundary + nl + p + nl for p in parts)
    if close:
        body += b"--" + boundary + b"--" + nl
    hb = (header_boundary if header_boundary is not None else boundary).decode("latin-1")
    return raw(body, f"multipart/form-data; boundary={hb}{ctype_extra}")


def fields_with(image: bytes, **fields: bytes) -> list[bytes]:
    return [_part("image", image, filename="a.jpg"),
            *(_part(k, v) for k, v in fields.items())]


@dataclass(frozen=True)
class Hostile:
    id: str
    send: Send
    expect: tuple[int, ...]  # statuses accepted
    code: str | None = None  # the error code, where one is certain
    by_app: bool = True  # False: the HTTP parser may refuse it (plain text, not our JSON)
    says: str | None = None  # a part of the error message


def _jpeg() -> bytes:
    return _save(Image.new("RGB", (48, 40), (200, 30, 30)), "JPEG")


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def catalogue() -> list[Hostile]:
    jpeg = _jpeg()
    gif = _gif(1)
    noise = _save(Image.effect_noise((64, 64), 60).convert("RGB"), "PNG")
    png16 = _png(32, 32, _png_rows(32, 32, b"\x12\x34" * 3), depth=16, colour=2)
    png16a = _png(32, 32, _png_rows(32, 32, b"\x12\x34\x56\x78\x9a\xbc\xff\xff"), depth=16,
                  colour=6)
    png16ga = _png(32, 32, _png_rows(32, 32, b"\x12\x34\x80\x00"), depth=16, colour=4)
    huge_int = "1" + "0" * 5000
    deep_tokens = _deep(100_000)
    b64 = base64.b64encode(jpeg).decode()
    good_json = {"image": b64, **Q}
    return [
        # decompression bombs and huge dimensions in tiny files
        Hostile("png-deflate-bomb-30000x30000", upload(_png_bomb()), (413,), "image_too_large"),
        Hostile("png-header-claims-2^31-squared",
                upload(_png(2**31 - 1, 2**31 - 1, zlib.compress(b"\x00" * 10))), (413,),
                "image_too_large"),
        Hostile("png-header-claims-1900x1900-tiny-body",
                upload(_png(1900, 1900, zlib.compress(b"\x00" * 10))), (422,), "invalid_image"),
        Hostile("png-zero-width", upload(_png(0, 10, zlib.compress(b"\x00"))), (422,),
                "invalid_image"),
        Hostile("png-ztxt-chunk-inflates-to-50MB", upload(_png_with_chunk_bomb(b"zTXt")),
                (200, 422)),
        Hostile("png-iccp-chunk-inflates-to-50MB", upload(_png_with_chunk_bomb(b"iCCP")),
                (200, 422)),
        Hostile("jpeg-header-claims-60000x60000", upload(_jpeg_claiming(60000, 60000)), (413,),
                "image_too_large"),
        Hostile("jpeg-header-claims-65535x65535", upload(_jpeg_claiming(65535, 65535)), (413,),
                "image_too_large"),
        Hostile("jpeg-header-claims-5000x5000", upload(_jpeg_claiming(5000, 5000)), (413,),
                "image_too_large"),
        Hostile("jpeg-header-claims-1900x1900-tiny-body", upload(_jpeg_claiming(1900, 1900)),
                (200, 422)),  # libjpeg fills a body that ends early: bounded by max_pixels
        Hostile("jpeg-header-claims-0x0", upload(_jpeg_claiming(0, 0)), (422,), "invalid_image"),
        Hostile("bmp-header-claims-50000x50000", upload(_bmp_claiming(50000, 50000)), (413,),
                "image_too_large"),
        Hostile("bmp-negative-height", upload(_bmp_claiming(100, -(2**31))), (413, 422)),
        Hostile("gif-screen-65535x65535-one-pixel-frame", upload(_gif(1, screen=65535)),
                (413,), "image_too_large"),
        Hostile("webp-vp8x-canvas-16384x16384", upload(_webp_canvas(16384, 16384)), (413,),
                "image_too_large"),
        # truncated files
        Hostile("png-signature-and-ihdr-only", upload(_small_png()[:33]), (422,),
                "invalid_image"),
        Hostile("png-cut-inside-idat", upload(noise[: len(noise) // 2]), (422,),
                "invalid_image"),
        Hostile("gif-header-only", upload(gif[:13]), (422,), "invalid_image"),
        Hostile("jpeg-soi-only", upload(jpeg[:2]), (415, 422)),
        Hostile("jpeg-headers-without-scan", upload(jpeg[: jpeg.index(b"\xff\xda")]), (422,),
                "invalid_image"),
        Hostile("webp-cut-after-header",
                upload(_save(Image.new("RGB", (64, 64), "red"), "WEBP")[:40]), (422,),
                "invalid_image"),
        Hostile("bmp-header-only", upload(_bmp_claiming(64, 64)), (422,), "invalid_image"),
        # polyglots: decoded as the image PIL safely reads, or refused; never executed
        Hostile("gif-that-is-also-a-zip",
                upload(gif + _zip({"evil.html": HTML, "run.sh": b"rm -rf /"})), (200,)),
        Hostile("jpeg-with-html-js-comment-and-trailer",
                upload(_save(Image.new("RGB", (40, 30), "red"), "JPEG", comment=HTML) + HTML,
                       filename="x.html", ctype="text/html"), (200,)),
        Hostile("gif-magic-then-javascript",
                upload(b"GIF89a/*\x00\x00\x00\x00*/=1;alert(1);//" + SCRIPT), (413, 422)),
        Hostile("jpeg-magic-png-body", upload(b"\xff\xd8\xff\xe0" + _small_png()), (422,),
                "invalid_image"),
        Hostile("png-signature-jpeg-body", upload(_small_png()[:8] + jpeg), (422,),
                "invalid_image"),
        Hostile("html-page-sent-as-jpeg", upload(HTML), (415,), "unsupported_media_type"),
        Hostile("svg-with-script", upload(b'<svg xmlns="http://www.w3.org/2000/svg">'
                                          + SCRIPT + b"</svg>", ctype="image/svg+xml"),
                (415,), "unsupported_media_type"),
        Hostile("zip-archive", upload(_zip({"a.jpg": jpeg})), (415,), "unsupported_media_type"),
        # animations: only the first frame is decoded
        Hostile("gif-40000-frames", upload(_gif(40_000)), (200,)),
        Hostile("apng-claims-2^31-frames", upload(_apng_claiming_frames(2**31 - 1)),
                (200, 422)),
        # EXIF
        *(Hostile(f"jpeg-exif-orientation-{o}", upload(_jpeg_exif(o)), (200,))
          for o in (0, 9, 255, 65535)),
        Hostile("png-exif-orientation-65535", upload(_jpeg_exif(65535, "PNG")), (200,)),
        Hostile("jpeg-exif-garbage", upload(_jpeg_with_app1(b"Exif\x00\x00" + b"\xa5" * 300)),
                (200,)),
        Hostile("jpeg-exif-ifd-claims-65535-entries",
                upload(_jpeg_with_app1(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")),
                (200,)),
        Hostile("jpeg-exif-orientation-offset-past-the-end",
                upload(_jpeg_with_app1(b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01"
                                       b"\x01\x12\x00\x04\x7f\xff\xff\xff\x7f\xff\xff\xff"
                                       b"\x00\x00\x00\x00")), (200,)),
        Hostile("jpeg-exif-ifd-loops-to-itself",
                upload(_jpeg_with_app1(b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x01\x00"
                                       b"\x12\x01\x03\x00\x01\x00\x00\x00\x06\x00\x00\x00"
                                       b"\x08\x00\x00\x00")), (200,)),
        # 16-bit variants (16-bit greyscale and CMYK JPEG are in test_bad_input)
        Hostile("png-16-bit-rgb", upload(png16), (200,)),
        Hostile("png-16-bit-rgba", upload(png16a), (200,)),
        Hostile("png-16-bit-grey-alpha", upload(png16ga), (200,)),
        Hostile("jpeg-cmyk-progressive", upload(_save(Image.new("CMYK", (48, 40), (0, 90, 90, 0)),
                                                      "JPEG", progressive=True)), (200,)),
        # malformed multipart
        Hostile("multipart-empty-boundary", raw(b"--\r\n", "multipart/form-data; boundary="),
                (400, 422)),
        Hostile("multipart-wrong-boundary",
                multipart(fields_with(jpeg, question=b"q"), header_boundary=b"other"),
                (400, 422)),
        Hostile("multipart-unterminated-part",
                multipart([_part("question", b"q"), _part("image", jpeg, filename="a.jpg")],
                          close=False), (400, 422)),
        Hostile("multipart-part-never-ends", raw(
            b"--b\r\n" + _part("image", jpeg[:200], filename="a.jpg"),
            "multipart/form-data; boundary=b"), (400, 422)),
        Hostile("multipart-10000-fields",
                multipart(fields_with(jpeg, question=b"q")
                          + [_part(f"f{i}", b"x") for i in range(10_000)]),
                (400,), "invalid_multipart"),
        Hostile("multipart-380000-tiny-parts",  # each part: its name and a CRLF
                raw(b"--b" + b"ab\r\n--b" * 380_000 + b"--\r\n",
                    "multipart/form-data; boundary=b"), (400,), "invalid_multipart"),
        Hostile("multipart-200-files",
                multipart([_part("image", jpeg, filename=f"{i}.jpg") for i in range(200)]),
                (400,), "invalid_multipart"),
        Hostile("multipart-1MB-field-name",
                multipart([*fields_with(jpeg, question=b"q"), _part("n" * 1_000_000, b"x")]),
                (400, 413, 422)),
        Hostile("multipart-1MB-filename", multipart(
            [_part("image", jpeg, filename="f" * 1_000_000), _part("question", b"q")]),
            (200, 400, 413, 422)),
        Hostile("multipart-headers-with-bare-lf",
                multipart(fields_with(jpeg, question=b"q"), nl=b"\n"), (200, 400, 422)),
        Hostile("multipart-part-without-content-disposition",
                multipart([b"Content-Type: text/plain\r\n\r\nq"]), (400,), "invalid_multipart"),
        Hostile("multipart-part-without-name",
                multipart([b"Content-Disposition: form-data\r\n\r\nq"]), (400,),
                "invalid_multipart"),
        Hostile("multipart-bogus-charset", multipart(fields_with(jpeg, question=b"q"),
                                                     ctype_extra="; charset=x-no-such-codec"),
                (200,)),
        Hostile("multipart-charset-field-utf7", multipart(
            [*fields_with(jpeg, question=b"+AGEAYgBj-"), _part("_charset_", b"utf-7")]),
            (200, 422)),
        Hostile("multipart-question-not-utf8",
                multipart(fields_with(jpeg, question=b"caf\xe9 \xff\xfe\xed\xa0\x80?")),
                (200,)),
        Hostile("multipart-nul-in-question",
                multipart(fields_with(jpeg, question=b"what\x00 colour?\x00")), (200,)),
        Hostile("multipart-nul-in-field-name",
                multipart([*fields_with(jpeg, question=b"q"), _part(b"top\x00_k", b"3")]),
                (422,), "invalid_field"),
        Hostile("multipart-json-field-nested-100000-deep", multipart(
            fields_with(jpeg, question=b"q", ocr_tokens=deep_tokens.encode())), (400,),
            "invalid_json"),
        Hostile("multipart-json-field-5000-digit-number", multipart(fields_with(
            jpeg, question=b"q", ocr_tokens=f'[{{"word":"a","box":[{huge_int},0,0,0]}}]'
            .encode())), (400,), "invalid_json"),
        Hostile("multipart-json-field-lone-surrogate-textvqa", raw(
            b"".join(b"--b\r\n" + p + b"\r\n" for p in fields_with(
                jpeg, question=b"q", ocr_tokens=b'[{"word":"\\udfff","box":[0,0,1,1]}]'))
            + b"--b--\r\n", "multipart/form-data; boundary=b", route="textvqa"), (400,),
            "invalid_json"),
        # JSON bodies
        Hostile("json-over-the-body-limit", as_json(json.dumps(
            {"image": "A" * BODY_LIMIT, **Q})), (413,), "payload_too_large"),
        Hostile("jobs-json-over-the-body-limit", as_json(b" " * (BODY_LIMIT + 1), "jobs"),
                (413,), "payload_too_large"),
        Hostile("json-array-nested-100000-deep", as_json(deep_tokens), (400,), "invalid_json"),
        Hostile("json-object-nested-100000-deep", as_json('{"a":' * 100_000 + "1"
                                                          + "}" * 100_000), (400,),
                "invalid_json"),
        Hostile("json-field-nested-100000-deep",
                as_json('{"question":"q","history":' + deep_tokens + "}"), (400,),
                "invalid_json"),
        Hostile("jobs-json-nested-100000-deep", as_json(deep_tokens, "jobs"), (400,),
                "invalid_json"),
        Hostile("json-5000-digit-integer",
                as_json(f'{{"question":"q","top_k":{huge_int},"image":"{b64}"}}'), (400,),
                "invalid_json"),
        Hostile("jobs-json-5000-digit-integer", as_json(f'{{"batch_size":{huge_int}}}', "jobs"),
                (400,), "invalid_json"),
        Hostile("json-200000-unknown-keys", as_json(
            "{" + ",".join(f'"k{i}":0' for i in range(200_000)) + f',"image":"{b64}"}}'),
            (400,), "invalid_json"),  # refused before 200000 validation errors are made
        Hostile("json-300-unknown-keys", as_json(json.dumps(
            {**good_json, **{f"k{i}": 0 for i in range(300)}})), (422,), "invalid_field",
            says="and 290 more"),
        Hostile("json-900000-empty-arrays", as_json(
            '{"question":"q","options":[' + ",".join(["[]"] * 900_000) + "]}", "dialog"),
            (400,), "invalid_json"),
        Hostile("json-gzip-bomb-not-inflated", raw(
            gzip.compress(b"[" * 50_000_000), "application/json", **{"content-encoding": "gzip"}),
            (400,), "invalid_json"),
        Hostile("json-nan-and-infinity", as_json(
            f'{{"question":"q","top_k":NaN,"image":"{b64}"}}'), (422,), "invalid_field"),
        Hostile("json-question-lone-surrogate",
                as_json(json.dumps({**good_json, "question": "what \ud800?"})), (400,),
                "invalid_json"),
        Hostile("json-ocr-word-lone-surrogate", as_json(json.dumps(
            {**good_json, "ocr_tokens": [{"word": "\udfff", "box": [0, 0, 1, 1]}]}),
            "textvqa"), (400,), "invalid_json"),
        Hostile("json-key-lone-surrogate", as_json(json.dumps({**good_json, "\ud800": 1})),
                (400,), "invalid_json"),
        Hostile("jobs-split-lone-surrogate", as_json(json.dumps(
            {"task": "vqa", "dataset": "vqa2", "split": "\ud800", "data_dir": "x"}), "jobs"),
            (400,), "invalid_json"),
        Hostile("json-invalid-utf8-inside-a-string",
                as_json(b'{"question":"\xc3\x28","image":"' + b64.encode() + b'"}'), (400,),
                "invalid_json"),
        Hostile("json-nul-in-question",
                as_json(json.dumps({**good_json, "question": "what\x00 colour?"})), (200,)),
        Hostile("json-utf16-body", as_json(json.dumps(good_json).encode("utf-16")), (200,)),
        Hostile("json-image-not-a-string-but-deep-list",
                as_json('{"question":"q","image":' + _deep(500) + "}"), (422,),
                "invalid_field"),
        # headers
        Hostile("content-type-64KB", raw(b"{}", "application/json; x=" + "a" * 65536),
                (400, 413, 422, 431), by_app=False),
        Hostile("header-value-1MB", upload(jpeg, headers={"x-junk": "j" * 1_000_000}),
                (200, 400, 413, 431), by_app=False),
        Hostile("5000-headers", upload(jpeg, headers=[(f"x-h{i}", "v") for i in range(5000)]),
                (200, 400, 413, 431), by_app=False),
        Hostile("authorization-header-1MB", upload(
            jpeg, headers={"authorization": "Bearer " + "k" * 1_000_000}),
            (200, 400, 413, 431), by_app=False),
    ]


CASES = catalogue()


# -- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(demo_model: Any) -> Iterator[LiveServer]:
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(device="cpu", max_upload_bytes=MAX_UPLOAD, max_image_pixels=MAX_PIXELS,
                        max_question_chars=200)
    live = LiveServer(create_app(settings, {"demo": demo_model})).start()
    yield live
    live.stop()


def _good(http: httpx.Client, server: LiveServer, image_bytes: bytes) -> None:
    r = http.post(f"{server.url}/vqa", files={"image": ("a.jpg", image_bytes)}, data=Q)
    assert r.status_code == 200, r.text
    assert len(r.json()["answers"]) == 5


def _check(case: Hostile, http: httpx.Client, server: LiveServer) -> httpx.Response:
    t0 = time.perf_counter()
    r = case.send(http, server.url)
    took = time.perf_counter() - t0
    assert took < PER_REQUEST_S, f"{case.id}: {took:.1f} s"
    assert r.status_code in case.expect, (case.id, r.status_code, r.text[:500])
    assert r.status_code < 500
    if r.status_code == 200:
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body["answers"] and body["model"] == "demo"
        assert b"<script" not in r.content and b"<svg" not in r.content
    elif case.by_app or r.headers.get("content-type") == "application/json":
        assert r.headers["content-type"] == "application/json", (case.id, r.text[:200])
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert "Traceback" not in body["error"]["message"]
        if case.code is not None:
            assert body["error"]["code"] == case.code, (case.id, body)
        if case.says is not None:
            assert case.says in body["error"]["message"], (case.id, body)
        assert len(r.content) < 4096, (case.id, len(r.content))  # no echo of the input
    return r


# -- tests ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_input(case: Hostile, server: LiveServer, http: httpx.Client,
                       image_bytes: bytes) -> None:
    _check(case, http, server)
    _good(http, server, image_bytes)


def _status_kib() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def _reset_peak() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def test_memory_stays_bounded_over_a_batch(server: LiveServer, http: httpx.Client,
                                           image_bytes: bytes) -> None:
    for case in CASES:  # warm-up: allocator pools, PIL plugins, the multipart parser
        _check(case, http, server)
    _good(http, server, image_bytes)
    before = _status_kib()["VmRSS"]
    peak_known = _reset_peak()
    for _ in range(3):
        for case in CASES:
            _check(case, http, server)
    _good(http, server, image_bytes)
    after = _status_kib()
    growth = (after["VmRSS"] - before) / 1024
    assert growth < RSS_GROWTH_MIB, f"RSS grew by {growth:.0f} MiB over the batch"
    if peak_known:
        peak = (after["VmHWM"] - before) / 1024
        assert peak < RSS_PEAK_MIB, f"RSS peaked {peak:.0f} MiB above its start"
    metrics = http.get(f"{server.url}/metrics").text
    assert 'status="500"' not in metrics

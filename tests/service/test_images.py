"""service.images: untrusted upload bytes -> loaded RGB PIL image, or an ImageError with the
right status/code. Every input is a real file encoded by PIL (or a hand-written PNG/WebP
header where PIL would need gigabytes to write one); nothing is written outside tmp_path."""

from __future__ import annotations

import base64
import binascii
import io
import pickle
import random
import struct
import warnings
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFile, PngImagePlugin

from service import images
from service.images import ALLOWED_FORMATS, ImageError, decode_base64_image, decode_image

MiB = 1 << 20
LIMITS: dict[str, int] = {"max_bytes": 10 * MiB, "max_pixels": 40_000_000}
RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


# -- helpers ----------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def decode(data: bytes, **overrides: Any) -> Image.Image:
    return decode_image(data, **{**LIMITS, **overrides})


def refused(data: bytes, **overrides: Any) -> ImageError:
    with pytest.raises(ImageError) as info:
        decode(data, **overrides)
    return info.value


def px(img: Image.Image, x: int, y: int) -> tuple[int, ...]:
    value = img.getpixel((x, y))
    assert isinstance(value, tuple)
    return value


def close_to(actual: Any, expected: tuple[int, ...], tol: int = 0) -> bool:
    return len(actual) == len(expected) and all(
        abs(a - e) <= tol for a, e in zip(actual, expected)
    )


def picture(size: tuple[int, int] = (64, 48)) -> Image.Image:
    """RGB test picture: four coloured quadrants (compresses well, survives JPEG)."""
    img = Image.new("RGB", size, RED)
    w, h = size
    img.paste(BLUE, (w // 2, 0, w, h // 2))
    img.paste((0, 160, 0), (0, h // 2, w // 2, h))
    img.paste(WHITE, (w // 2, h // 2, w, h))
    return img


def animation(fmt: str, **params: Any) -> bytes:
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, BLUE, (0, 255, 0))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], **params)


def exif_jpeg(
    size: tuple[int, int], orientation: int, *, marker: int = 6, mode: str = "RGB"
) -> bytes:
    """Black JPEG with a white ``marker`` x ``marker`` block at the stored top-left corner."""
    img = Image.new("RGB", size, BLACK)
    img.paste(WHITE, (0, 0, marker, marker))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img.convert(mode), "JPEG", quality=95, exif=exif)


@cache
def bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG written row block by row block: kilobytes on disk and a few
    MB of memory to write, however many pixels it declares."""

    def chunk(tag: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(tag + payload)
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", crc)

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    per_block = max(1, MiB // len(row))
    compressor = zlib.compressobj(9)
    parts, left = [], height
    while left:
        n = min(left, per_block)
        parts.append(compressor.compress(row * n))
        left -= n
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts))
            + chunk(b"IEND", b""))


# -- the error type ---------------------------------------------------------------------------


def test_image_error_carries_status_code_message_and_pickles() -> None:
    err = ImageError(415, "unsupported_media_type", "no TIFF here")
    assert isinstance(err, ValueError)
    assert (err.status, err.code, err.message, str(err)) == (
        415, "unsupported_media_type", "no TIFF here", "no TIFF here")
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.code, back.message) == (415, "unsupported_media_type", "no TIFF here")
    assert frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"}) == ALLOWED_FORMATS


def test_bad_arguments_are_value_errors_not_image_errors() -> None:
    data = encode(picture(), "PNG")
    for kwargs in ({"max_bytes": 0}, {"max_pixels": 0}, {"target_size": 0}):
        with pytest.raises(ValueError) as info:
            decode(data, **kwargs)
        assert not isinstance(info.value, ImageError)


# -- allowed formats --------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "params", "tol"), [
    ("JPEG", {"quality": 95}, 6),
    ("PNG", {}, 0),
    ("WEBP", {"lossless": True}, 0),
    ("BMP", {}, 0),
    ("GIF", {}, 0),
])
def test_each_allowed_format_decodes_to_a_loaded_detached_rgb_image(
    fmt: str, params: dict[str, Any], tol: int
) -> None:
    out = decode(encode(picture(), fmt, **params))
    assert type(out) is Image.Image  # a plain image, not the ImageFile holding the BytesIO
    assert getattr(out, "fp", None) is None
    assert out.mode == "RGB" and out.size == (64, 48)
    assert close_to(out.getpixel((5, 5)), RED, tol)
    assert close_to(out.getpixel((60, 5)), BLUE, tol)
    assert close_to(out.getpixel((5, 40)), (0, 160, 0), tol)
    assert close_to(out.getpixel((60, 40)), WHITE, tol)
    out.putpixel((0, 0), BLACK)  # writable and independent of the input


def test_size_limit_in_bytes_and_empty_input() -> None:
    data = encode(picture(), "PNG")
    assert decode(data, max_bytes=len(data)).size == (64, 48)
    err = refused(data, max_bytes=len(data) - 1)
    assert (err.status, err.code) == (413, "payload_too_large")
    assert f"{len(data) - 1:,} bytes" in err.message
    err = refused(b"x" * (10 * MiB + 1))
    assert (err.status, err.code) == (413, "payload_too_large")
    assert "10 MiB" in err.message and "10,485,760 bytes" in err.message
    err = refused(b"")
    assert (err.status, err.code) == (422, "empty_image")


# -- refused formats and corrupt data ---------------------------------------------------------


@pytest.mark.parametrize(("fmt", "named"), [
    ("TIFF", "TIFF"), ("ICO", "ICO"), ("PPM", None), ("TGA", None), ("PCX", None),
    ("EPS", "EPS"), ("PDF", "PDF"),
])
def test_formats_pil_can_read_but_are_not_allowed_are_415(fmt: str, named: str | None) -> None:
    img = picture((32, 32))
    err = refused(encode(img, fmt))
    assert (err.status, err.code) == (415, "unsupported_media_type")
    assert "BMP, GIF, JPEG, PNG, WEBP" in err.message
    if named:
        assert f"looks like {named}" in err.message


def test_random_bytes_and_text_are_415() -> None:
    rng = random.Random(1)
    for blob in (rng.randbytes(5000), b"hello world", b"<svg xmlns='x'></svg>"):
        err = refused(blob)
        assert (err.status, err.code) == (415, "unsupported_media_type")


def test_open_never_tries_other_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every non-allowed plugin is replaced by one that accepts anything: a decode that does not
    restrict ``formats`` would call it."""
    Image.init()
    called: list[str] = []

    def plugin(name: str) -> tuple[Callable[..., Any], Callable[[bytes], bool]]:
        def factory(fp: Any, filename: Any) -> Any:
            called.append(name)
            raise SyntaxError("spy plugin")
        return factory, lambda prefix: True

    for name in list(Image.OPEN):
        if name not in ALLOWED_FORMATS:
            monkeypatch.setitem(Image.OPEN, name, plugin(name))
    err = refused(encode(picture((32, 32)), "TIFF"))
    assert err.status == 415 and called == []
    assert decode(encode(picture((32, 32)), "PNG")).size == (32, 32)


@pytest.mark.parametrize(("fmt", "params"), [
    ("JPEG", {"quality": 90}), ("PNG", {}), ("GIF", {}), ("WEBP", {"quality": 80}), ("BMP", {}),
])
def test_truncated_allowed_formats_are_422_not_partial_images(
    fmt: str, params: dict[str, Any]
) -> None:
    data = encode(Image.effect_noise((96, 64), 60).convert("RGB"), fmt, **params)
    for cut in (len(data) // 2, len(data) * 9 // 10):
        err = refused(data[:cut])
        assert (err.status, err.code) == (422, "invalid_image"), (fmt, cut, err.message)
        assert fmt in err.message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_jpeg_is_an_error_not_a_grey_half_image() -> None:
    data = encode(picture((256, 256)), "JPEG", quality=90)
    err = refused(data[: len(data) // 2])
    assert (err.status, err.code) == (422, "invalid_image")
    assert "truncated" in err.message
    assert decode(data).getpixel((250, 250)) == pytest.approx(WHITE, abs=6)


@pytest.mark.parametrize("magic", [
    b"\x89PNG\r\n\x1a\n", b"GIF89a", b"\xff\xd8\xff\xe0", b"RIFF\x10\x00\x00\x00WEBPVP8 ", b"BM",
])
def test_allowed_magic_followed_by_garbage_is_422(magic: bytes) -> None:
    err = refused(magic + random.Random(3).randbytes(200))
    assert (err.status, err.code) == (422, "invalid_image")


# -- decompression bombs ----------------------------------------------------------------------


def test_own_pixel_limit_is_checked_from_the_header_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = bilevel_png(5000, 5000)  # 25 M pixels in a few KB
    assert len(data) < 20_000

    def no_decoding(self: Any) -> Any:
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", no_decoding)
    err = refused(data, max_pixels=1_000_000)
    assert (err.status, err.code) == (413, "image_too_large")
    assert "5000x5000" in err.message and "25,000,000" in err.message
    assert "1,000,000" in err.message


def test_the_bilevel_png_writer_makes_valid_images() -> None:
    out = decode(bilevel_png(300, 200))
    assert out.size == (300, 200) and out.getextrema() == ((0, 0), (0, 0), (0, 0))


def test_bombs_over_pils_limits_are_413_and_pil_globals_are_untouched() -> None:
    max_image_pixels = Image.MAX_IMAGE_PIXELS
    filters = list(warnings.filters)
    huge = bilevel_png(20_000, 20_000)  # 400 M pixels > 2 * MAX_IMAGE_PIXELS: PIL's error
    assert len(huge) < 100_000
    big = bilevel_png(10_000, 10_000)  # 100 M pixels: PIL's DecompressionBombWarning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for data, max_pixels, count in ((huge, 40_000_000, "400,000,000"),
                                        (huge, 10**12, "400,000,000"),
                                        (big, 40_000_000, "100,000,000"),
                                        (big, 150_000_000, "100,000,000")):
            err = refused(data, max_pixels=max_pixels)
            assert (err.status, err.code) == (413, "image_too_large")
            assert count in err.message and f"{max_pixels:,}" in err.message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert max_image_pixels == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert warnings.filters == filters


def test_webp_canvas_size_is_checked_before_libwebp_allocates_it() -> None:
    small = encode(picture((16, 16)), "WEBP", lossless=True)
    assert small[12:16] == b"VP8L"
    bits = int.from_bytes(small[21:25], "little") & ~((1 << 28) - 1)
    bits |= (16_000 - 1) | ((12_000 - 1) << 14)  # claim a 16000x12000 canvas
    forged = small[:21] + bits.to_bytes(4, "little") + small[25:]
    err = refused(forged)
    assert (err.status, err.code) == (413, "image_too_large")
    assert "16000x12000" in err.message


# -- frames, orientation, modes ---------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "params"), [
    ("GIF", {"duration": 100}), ("PNG", {"duration": 100}), ("WEBP", {"lossless": True}),
    ("MPO", {}),
])
def test_animations_and_multi_picture_jpegs_give_the_first_frame(
    fmt: str, params: dict[str, Any]
) -> None:
    data = animation(fmt, **params)
    with Image.open(io.BytesIO(data)) as probe:
        assert getattr(probe, "n_frames", 1) == 3
    out = decode(data)
    assert out.mode == "RGB" and out.size == (16, 16)
    assert close_to(out.getpixel((8, 8)), RED, 3)


@pytest.mark.parametrize(("orientation", "size", "marker_at"), [
    (1, (40, 20), (1, 1)),     # as stored
    (3, (40, 20), (38, 18)),   # rotated 180: marker bottom-right
    (6, (20, 40), (18, 1)),    # rotate 90 clockwise to view: top-left goes top-right
    (8, (20, 40), (1, 38)),    # rotate 90 counter-clockwise: top-left goes bottom-left
])
def test_exif_orientation_is_applied(
    orientation: int, size: tuple[int, int], marker_at: tuple[int, int]
) -> None:
    out = decode(exif_jpeg((40, 20), orientation, marker=4))
    assert out.size == size
    white = [(x, y) for x in range(out.width) for y in range(out.height)
             if sum(px(out, x, y)) > 600]
    assert marker_at in white
    assert all(abs(x - marker_at[0]) <= 3 and abs(y - marker_at[1]) <= 3 for x, y in white)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_broken_exif_keeps_the_image_as_stored(mode: str) -> None:
    """A bad TIFF header in the EXIF block: PIL's JpegImageFile.getexif() shrugs it off, but
    getexif() on the converted (L -> RGB) image raises SyntaxError; both give the image."""
    data = exif_jpeg((40, 20), 6, mode=mode)
    start = data.index(b"Exif\x00\x00") + 6
    broken = data[:start] + b"XX" + data[start + 2:]  # bad TIFF byte-order mark
    out = decode(broken)
    assert out.mode == "RGB" and out.size == (40, 20)
    assert sum(px(out, 1, 1)) > 600 and sum(px(out, 38, 18)) < 60


def _png(mode: str, values: list[Any], **params: Any) -> bytes:
    img = Image.new(mode, (len(values), 1))
    for x, v in enumerate(values):
        img.putpixel((x, 0), v)
    return encode(img, "PNG", **params)


def _palette(fmt: str, **params: Any) -> bytes:
    img = Image.new("P", (3, 1))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (253 * 3))
    for x in range(3):
        img.putpixel((x, 0), x)
    return encode(img, fmt, **params)


def _sixteen_bit(**params: Any) -> bytes:
    arr = np.array([[0, 257 * 128, 65535, 1000]], dtype=np.uint16)
    return encode(Image.fromarray(arr), "PNG", **params)


MODE_CASES: list[tuple[str, Callable[[], bytes], list[tuple[int, int, int]], int]] = [
    ("RGB", lambda: _png("RGB", [(10, 20, 30), (200, 100, 0)]), [(10, 20, 30), (200, 100, 0)], 0),
    ("L", lambda: _png("L", [0, 77, 255]), [BLACK, (77, 77, 77), WHITE], 0),
    ("LA", lambda: _png("LA", [(0, 0), (100, 255), (0, 128)]),
     [WHITE, (100, 100, 100), (127, 127, 127)], 1),
    ("1", lambda: _png("1", [0, 1]), [BLACK, WHITE], 0),
    ("1-bmp", lambda: encode(Image.new("1", (2, 1), 1), "BMP"), [WHITE, WHITE], 0),
    ("P", lambda: _palette("PNG"), [BLACK, RED, BLUE], 0),
    ("P-transparent", lambda: _palette("PNG", transparency=0), [WHITE, RED, BLUE], 0),
    ("P-transparent-gif", lambda: _palette("GIF", transparency=2), [BLACK, RED, WHITE], 0),
    ("RGBA", lambda: _png("RGBA", [(0, 0, 0, 0), (255, 0, 0, 128), (0, 0, 255, 255)]),
     [WHITE, (255, 127, 127), BLUE], 1),
    ("RGBA-webp", lambda: encode(Image.new("RGBA", (2, 1), (0, 0, 0, 0)), "WEBP",
                                 lossless=True, exact=True), [WHITE, WHITE], 0),
    ("L-transparency", lambda: _png("L", [0, 90], transparency=0), [WHITE, (90, 90, 90)], 0),
    ("RGB-transparency", lambda: _png("RGB", [(1, 2, 3), (4, 5, 6)], transparency=(1, 2, 3)),
     [WHITE, (4, 5, 6)], 0),
    ("CMYK-jpeg", lambda: encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG",
                                 quality=95), [RED, RED], 3),
    ("I;16", _sixteen_bit, [BLACK, (128, 128, 128), WHITE, (4, 4, 4)], 0),
    ("I;16-transparency", lambda: _sixteen_bit(transparency=1000),
     [BLACK, (128, 128, 128), WHITE, WHITE], 0),
]


@pytest.mark.parametrize(("name", "make", "expected", "tol"), MODE_CASES,
                         ids=[c[0] for c in MODE_CASES])
def test_every_mode_becomes_rgb_with_alpha_on_white(
    name: str, make: Callable[[], bytes], expected: list[tuple[int, int, int]], tol: int
) -> None:
    data = make()
    source_mode = name.split("-")[0]
    with Image.open(io.BytesIO(data)) as probe:  # the file really has that mode
        assert probe.mode == source_mode
    out = decode(data)
    assert out.mode == "RGB"
    got = [out.getpixel((x, 0)) for x in range(len(expected))]
    assert all(close_to(g, e, tol) for g, e in zip(got, expected)), got


def test_32_bit_integer_greyscale_is_scaled_like_16_bit() -> None:
    """PIL >= 10 opens 16-bit PNGs as I;16; older ones (and some paths) give mode I."""
    img = Image.fromarray(np.array([[-5, 0, 257 * 128, 65535, 70000]], dtype=np.int32))
    assert img.mode == "I"
    out = images._to_rgb(img)
    assert [px(out, x, 0)[0] for x in range(5)] == [0, 0, 128, 255, 255]


# -- target_size: draft and reduce ------------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(picture((2000, 1500)), "JPEG", quality=85)


@pytest.mark.parametrize(("target", "size"), [
    (None, (2000, 1500)), (64, (250, 188)), (300, (500, 375)), (700, (1000, 750)),
    (1000, (2000, 1500)), (4000, (2000, 1500)),
])
def test_jpeg_draft_decodes_at_a_reduced_scale_never_below_target(
    big_jpeg: bytes, target: int | None, size: tuple[int, int]
) -> None:
    out = decode(big_jpeg, target_size=target)
    assert out.size == size
    if target is not None:
        assert min(out.size) >= min(target, 1500)
    w, h = out.size
    assert close_to(out.getpixel((w // 4, h // 4)), RED, 8)
    assert close_to(out.getpixel((3 * w // 4, h // 4)), BLUE, 8)


def test_jpeg_draft_with_orientation_and_cmyk() -> None:
    out = decode(exif_jpeg((2000, 1500), 6, marker=400), target_size=64)
    assert out.size == (188, 250)
    assert sum(px(out, 180, 10)) > 700 and sum(px(out, 10, 240)) < 60
    cmyk = encode(Image.new("CMYK", (800, 600), (0, 255, 255, 0)), "JPEG", quality=95)
    out = decode(cmyk, target_size=64)
    assert out.size == (100, 75) and close_to(out.getpixel((50, 37)), RED, 3)


@pytest.mark.parametrize(("fmt", "target", "size"), [
    ("PNG", 64, (112, 67)),      # factor min(1000 // 64, 600 // 64) = 9
    ("BMP", 300, (500, 300)),    # factor 2
    ("GIF", 400, (1000, 600)),   # factor 1: untouched
    ("WEBP", None, (1000, 600)),
])
def test_other_formats_are_box_reduced_by_an_integer_factor(
    fmt: str, target: int | None, size: tuple[int, int]
) -> None:
    params = {"lossless": True} if fmt == "WEBP" else {}
    out = decode(encode(picture((1000, 600)), fmt, **params), target_size=target)
    assert out.size == size
    assert close_to(out.getpixel((size[0] // 4, size[1] // 4)), RED, 0)
    assert close_to(out.getpixel((size[0] - 2, size[1] - 2)), WHITE, 0)


# -- base64 -----------------------------------------------------------------------------------


def b64decode(text: str, **overrides: Any) -> Image.Image:
    return decode_base64_image(text, **{**LIMITS, **overrides})


def b64_refused(text: str, **overrides: Any) -> ImageError:
    with pytest.raises(ImageError) as info:
        b64decode(text, **overrides)
    return info.value


def test_base64_plain_data_url_and_line_broken() -> None:
    data = encode(picture(), "PNG")
    text = base64.b64encode(data).decode()
    mime = base64.encodebytes(data).decode().replace("\n", "\r\n")
    for variant in (text, f"data:image/png;base64,{text}", f"DATA:IMAGE/PNG;BASE64,{text}",
                    f"data:image/png;name=x.png;base64,{text}", f"  {mime}\n", mime):
        out = b64decode(variant)
        assert out.size == (64, 48) and out.getpixel((60, 5)) == BLUE


@pytest.mark.parametrize("bad", [
    "iVBORw0KGgo$AAAA", "iVBORw0KGgo-AAA_", "iVBORw0KGgoAAA", "QQ==QQ==", "=QQQ", "iVBORé==",
    "data:text/plain;base64,iVBORw0KGgo=", "data:image/png,iVBORw0KGgo=",
])
def test_base64_is_strict(bad: str) -> None:
    err = b64_refused(bad)
    assert (err.status, err.code) == (400, "invalid_base64"), err.message


def test_base64_empty_and_not_an_image() -> None:
    assert b64_refused("").code == "empty_image"
    err = b64_refused(base64.b64encode(b"just some text, not an image").decode())
    assert (err.status, err.code) == (415, "unsupported_media_type")


def test_base64_length_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: Any, **kwargs: Any) -> bytes:
        raise AssertionError("decoded")

    monkeypatch.setattr(binascii, "a2b_base64", no_decoding)
    for text in ("A" * 5_000, " " * 1000 + "A" * 1400):
        err = b64_refused(text, max_bytes=1000)
        assert (err.status, err.code) == (413, "payload_too_large")
        assert "1,000 bytes" in err.message


def test_base64_limits_near_the_boundary() -> None:
    data = encode(picture(), "PNG")
    text = base64.b64encode(data).decode()
    assert b64decode(text, max_bytes=len(data)).size == (64, 48)
    # the encoded length passes, the decoded bytes are one too many
    err = b64_refused(text, max_bytes=len(data) - 1)
    assert (err.status, err.code) == (413, "payload_too_large")
    # MIME line breaks and a prefix fit in the slack
    wrapped = "data:image/png;base64," + base64.encodebytes(data).decode().replace("\n", "\r\n")
    assert b64decode(wrapped, max_bytes=len(data)).size == (64, 48)


# -- robustness -------------------------------------------------------------------------------


def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(4)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    elif kind == 1:  # flip bytes in the header
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(min(len(buf), 64))] = rng.randrange(256)
    elif kind == 2:  # truncate
        del buf[rng.randrange(1, len(buf)):]
    else:  # insert or delete a run
        pos = rng.randrange(len(buf))
        if rng.random() < 0.5:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        else:
            del buf[pos:pos + rng.randint(1, 16)]
    return bytes(buf)


FUZZ_SOURCES: dict[str, Callable[[], bytes]] = {
    "JPEG": lambda: exif_jpeg((48, 32), 6),
    "PNG": lambda: encode(picture((48, 32)).convert("RGBA"), "PNG"),
    "GIF": lambda: animation("GIF", duration=50),
    "WEBP": lambda: encode(picture((48, 32)), "WEBP", quality=70),
    "BMP": lambda: encode(picture((24, 16)), "BMP"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # PIL warns about corrupt EXIF
@pytest.mark.parametrize("fmt", sorted(FUZZ_SOURCES))
def test_fuzzed_inputs_decode_or_raise_image_error_only(fmt: str) -> None:
    source = FUZZ_SOURCES[fmt]()
    rng = random.Random(f"fuzz-{fmt}")
    outcomes: dict[Any, int] = {}
    for i in range(300):
        data = _mutate(rng, source)
        try:
            out = decode(data, max_pixels=1_000_000, target_size=16 if i % 2 else None)
        except ImageError as err:
            assert err.status in (413, 415, 422) and err.message
            outcomes[err.code] = outcomes.get(err.code, 0) + 1
        else:  # anything else propagates and fails the test
            assert type(out) is Image.Image and out.mode == "RGB"
            assert 0 < out.width * out.height <= 1_000_000
            out.getpixel((0, 0))
            outcomes["ok"] = outcomes.get("ok", 0) + 1
    assert outcomes.get("ok", 0) > 0 and outcomes.get("invalid_image", 0) > 0, outcomes


def test_concurrent_decoding_in_a_thread_pool() -> None:
    filters = list(warnings.filters)
    good = encode(picture(), "PNG")
    jobs = [good, bilevel_png(10_000, 10_000), good[:100], exif_jpeg((40, 20), 6)] * 8

    def run(data: bytes) -> Any:
        try:
            return decode(data).size
        except ImageError as err:
            return err.code

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(run, jobs))
    assert results == [(64, 48), "image_too_large", "invalid_image", (20, 40)] * 8
    assert warnings.filters == filters

"""Upload decoding for the inference service: untrusted bytes -> a fully loaded PIL RGB image.

Runs in a worker thread (never on the event loop), one call per request. Public API::

    decode_image(data, *, max_bytes, max_pixels, target_size=None) -> PIL.Image.Image
    decode_base64_image(text, *, max_bytes, max_pixels, target_size=None) -> PIL.Image.Image

Every refusal is an ``ImageError`` (a ``ValueError``) carrying ``status``, ``code`` and
``message``, which the HTTP layer returns as ``{"error": {"code": ..., "message": ...}}``:

======  ==========================  ==========================================================
status  code                        when
======  ==========================  ==========================================================
400     ``invalid_base64``          ``decode_base64_image`` only: not strict standard base64
                                    (other characters, bad padding, non-ASCII, a ``data:``
                                    prefix that is not ``data:image/<type>[;params];base64,``)
413     ``payload_too_large``       more than ``max_bytes`` bytes (for base64: the *encoded*
                                    text is refused by its length before anything is decoded)
413     ``image_too_large``         width x height from the header exceeds ``max_pixels``,
                                    checked before any pixel is decoded; also PIL's own
                                    decompression-bomb guard (see below)
415     ``unsupported_media_type``  not one of ``ALLOWED_FORMATS`` (TIFF, ICO, HEIC, PSD, SVG,
                                    random bytes, ...); the message lists the allowed formats
422     ``empty_image``             zero bytes
422     ``invalid_image``           starts like an allowed format but is corrupt or truncated,
                                    or PIL fails on it in any other way
======  ==========================  ==========================================================

No other exception escapes for bad bytes: whatever PIL raises (``OSError``, ``ValueError``,
``SyntaxError``, ``struct.error``, ``EOFError``, ``ZeroDivisionError``, ...) becomes 422
``invalid_image``. ``ValueError`` (not ``ImageError``) is raised only for a bad *argument*
(``max_bytes``/``max_pixels``/``target_size`` < 1): a server bug, not a bad upload.

What comes back:

* mode ``"RGB"``, pixels loaded, a plain ``PIL.Image.Image`` detached from the input bytes;
* the first frame of an animated GIF, PNG (APNG) or WebP; a JPEG with a multi-picture
  extension (PIL format ``MPO``, common from phone cameras) is a JPEG: its first picture;
* the EXIF orientation applied (``ImageOps.exif_transpose``). A broken EXIF block is only
  metadata: the image is then returned as stored instead of being refused;
* modes: alpha (RGBA, LA, PA, palette or L/RGB/1 with a ``transparency`` key) is composited
  on **white**; 16-bit greyscale (``I;16``, ``I``) is scaled to 8 bits (65535 -> 255,
  rounded) instead of PIL's ``convert`` clipping every value above 255 to white; CMYK, P,
  L, 1, ... go through ``convert("RGB")``.

``target_size`` (optional, the model's input side in pixels) only makes decoding cheaper,
never smaller than that side: a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8 scale through
``Image.draft`` (the largest scale that keeps *both* sides >= ``target_size``: a 2000x1500
JPEG with ``target_size=64`` decodes to 250x188); other formats are decoded in full and then
box-reduced by the integer factor ``min(w // target_size, h // target_size)`` (both sides
stay >= ``target_size``). Nothing else is resized here: the model's transform does the final
resize.

Limits and PIL's globals: ``max_pixels`` is this module's own check on the header size, made
before pixels are decoded (for WebP even before ``Image.open``, whose libwebp decoder
allocates the canvas on open). PIL's ``Image.MAX_IMAGE_PIXELS`` and
``ImageFile.LOAD_TRUNCATED_IMAGES`` are never changed: truncated data is an error, not a
grey half image. PIL's decompression-bomb guard still runs inside ``Image.open``; its
``DecompressionBombError`` and its ``DecompressionBombWarning`` (turned into an exception
while the header is read) both become 413 ``image_too_large``, so the effective ceiling is
``min(max_pixels, Image.MAX_IMAGE_PIXELS)``. ``warnings.catch_warnings`` is process-global
state, so that short section (header parsing only, never pixel decoding) holds a module lock.
"""

from __future__ import annotations

import binascii
import io
import re
import threading
import warnings
from typing import Final

import numpy as np
from PIL import (
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    UnidentifiedImageError,
    WebPImagePlugin,  # noqa: F401  (registers WEBP, so Image.open never needs Image.init())
)

__all__ = ["ALLOWED_FORMATS", "ImageError", "decode_base64_image", "decode_image"]

ALLOWED_FORMATS: Final[frozenset[str]] = frozenset({"JPEG", "PNG", "WEBP", "BMP", "GIF"})

_OPEN_FORMATS: Final[tuple[str, ...]] = tuple(sorted(ALLOWED_FORMATS))
_ALLOWED_TEXT: Final[str] = ", ".join(_OPEN_FORMATS)
_WHITE: Final[tuple[int, int, int]] = (255, 255, 255)
_SIXTEEN_BIT_MODES: Final[frozenset[str]] = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_MAX_REASON_CHARS: Final[int] = 200

# data:image/<subtype>[;param=value...];base64,
_DATA_URL: Final[re.Pattern[str]] = re.compile(
    r"data:image/[a-z0-9.+-]+(?:;[a-z0-9!#$&^_.+-]+=[^;,]*)*;base64,", re.IGNORECASE | re.ASCII
)
_B64_WHITESPACE: Final[bytes] = b" \t\n\r\f\v"
_B64_PREFIX_SLACK: Final[int] = 256  # a data: URL prefix and stray whitespace

# Serialises warnings.catch_warnings (global state) around Image.open: header parsing only.
_OPEN_LOCK: Final[threading.Lock] = threading.Lock()
_PIL_PIXELS: Final[re.Pattern[str]] = re.compile(r"\((\d+) pixels\)")


class ImageError(ValueError):
    """An upload refused; ``status`` is the HTTP status, ``code`` the machine-readable error
    code, ``message`` the human-readable reason (also ``str(exc)``)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        # All three in ``args`` so the exception survives pickling (Celery results).
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


def decode_image(
    data: bytes, *, max_bytes: int, max_pixels: int, target_size: int | None = None
) -> Image.Image:
    """Decode untrusted image bytes into a loaded RGB ``PIL.Image.Image`` (first frame, EXIF
    orientation applied). Raises ``ImageError`` for every bad input; see the module docstring
    for the status/code of each case and for what ``target_size`` does."""
    _check_arguments(max_bytes, max_pixels, target_size)
    size = len(data)
    if size > max_bytes:
        raise ImageError(
            413, "payload_too_large",
            f"image is {size:,} bytes; the limit is {_bytes_text(max_bytes)}",
        )
    if size == 0:
        raise ImageError(422, "empty_image", "image is empty (0 bytes)")
    _check_webp_canvas(data, max_pixels)

    img = _open(data, max_pixels)
    fmt = _family(img)
    try:
        return _decode(img, fmt, max_pixels, target_size)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, max_pixels) from exc
    except Exception as exc:  # any failure on untrusted bytes is the upload's fault
        raise _invalid(fmt, exc) from exc
    finally:
        img.close()


def decode_base64_image(
    text: str, *, max_bytes: int, max_pixels: int, target_size: int | None = None
) -> Image.Image:
    """``decode_image`` for standard base64 text (RFC 4648 alphabet with ``=`` padding),
    optionally behind a ``data:image/<type>;base64,`` prefix; whitespace and line breaks
    anywhere are ignored, any other character is 400 ``invalid_base64``. Text longer than
    ``max_bytes`` can encode to (plus slack for the prefix and line breaks) is refused with
    413 ``payload_too_large`` before any decoding."""
    _check_arguments(max_bytes, max_pixels, target_size)
    if not isinstance(text, str):
        raise ImageError(400, "invalid_base64", "image must be a base64 string")
    encoded_limit = 4 * -(-max_bytes // 3)  # base64 length of max_bytes bytes
    # MIME-style input breaks lines every 76 characters with CRLF: 2 extra per 76.
    text_limit = encoded_limit + encoded_limit // 38 + _B64_PREFIX_SLACK
    too_large = f"base64 image is longer than {_bytes_text(max_bytes)} can encode to"
    if len(text) > text_limit:
        raise ImageError(413, "payload_too_large", too_large)

    body = text.lstrip()
    match = _DATA_URL.match(body)
    if match:
        body = body[match.end():]
    elif body[:5].lower() == "data:":
        raise ImageError(
            400, "invalid_base64",
            "a data URL must look like data:image/<type>;base64,<data>; got "
            f"{body[:40].split(',')[0]!r}",
        )
    try:
        raw = body.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ImageError(
            400, "invalid_base64",
            f"base64 image contains a non-ASCII character ({body[exc.start]!r})",
        ) from None
    raw = raw.translate(None, _B64_WHITESPACE)
    if len(raw) > encoded_limit:
        raise ImageError(413, "payload_too_large", too_large)
    try:
        data = binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error as exc:
        raise ImageError(
            400, "invalid_base64",
            f"image is not valid base64 (standard alphabet A-Z a-z 0-9 + / with = padding): "
            f"{exc}",
        ) from None
    return decode_image(data, max_bytes=max_bytes, max_pixels=max_pixels,
                        target_size=target_size)


# -- steps ------------------------------------------------------------------------------------


def _check_arguments(max_bytes: int, max_pixels: int, target_size: int | None) -> None:
    if max_bytes < 1 or max_pixels < 1:
        raise ValueError(f"max_bytes and max_pixels must be >= 1, got {max_bytes}, {max_pixels}")
    if target_size is not None and target_size < 1:
        raise ValueError(f"target_size must be None or >= 1, got {target_size}")


def _open(data: bytes, max_pixels: int) -> ImageFile.ImageFile:
    """``Image.open`` restricted to the allowed formats (no other plugin is even tried), with
    PIL's decompression-bomb warning raised as an error."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError:
        sniffed = _sniff(data)
        if sniffed in ALLOWED_FORMATS:
            raise ImageError(
                422, "invalid_image",
                f"data starts like a {sniffed} image but its header cannot be read",
            ) from None
        detected = f" (looks like {sniffed})" if sniffed else ""
        raise ImageError(
            415, "unsupported_media_type",
            f"unsupported image format{detected}; allowed formats: {_ALLOWED_TEXT}",
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_error(exc, max_pixels) from exc
    except Exception as exc:  # a plugin accepted the magic bytes and then failed
        raise _invalid(_sniff(data) or "image", exc) from exc


def _family(img: ImageFile.ImageFile) -> str:
    """The allowed format ``img`` belongs to (MPO is a JPEG with extra pictures appended)."""
    fmt = "JPEG" if isinstance(img, JpegImagePlugin.JpegImageFile) else (img.format or "")
    if fmt not in ALLOWED_FORMATS:  # defensive: Image.open was restricted to these
        img.close()
        raise ImageError(
            415, "unsupported_media_type",
            f"unsupported image format ({fmt or 'unknown'}); allowed formats: {_ALLOWED_TEXT}",
        )
    return fmt


def _decode(
    img: ImageFile.ImageFile, fmt: str, max_pixels: int, target_size: int | None
) -> Image.Image:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise ImageError(422, "invalid_image", f"{fmt} image has no pixels ({width}x{height})")
    _check_pixels(width, height, max_pixels)
    is_jpeg = fmt == "JPEG"
    if is_jpeg and target_size is not None:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale; both sides stay >= target_size.
        img.draft("RGB", (target_size, target_size))
    img.load()  # frame 0 only; raises on truncated data (LOAD_TRUNCATED_IMAGES untouched)
    rgb = _to_rgb(img)
    if not is_jpeg and target_size is not None:
        rgb = _reduce(rgb, target_size)
    return _apply_orientation(rgb, owned=rgb is not img)


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            413, "image_too_large",
            f"image is {width}x{height} = {pixels:,} pixels; the limit is {max_pixels:,} pixels",
        )


def _check_webp_canvas(data: bytes, max_pixels: int) -> None:
    """WebP's decoder allocates its canvas inside ``Image.open``: check the size first, from
    the same header fields PIL reads (VP8 / VP8L / VP8X)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP" or len(data) < 30:
        return
    chunk = data[12:16]
    size: tuple[int, int] | None = None
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        size = (int.from_bytes(data[26:28], "little") & 0x3FFF,
                int.from_bytes(data[28:30], "little") & 0x3FFF)
    elif chunk == b"VP8X":
        size = (int.from_bytes(data[24:27], "little") + 1,
                int.from_bytes(data[27:30], "little") + 1)
    elif chunk == b"VP8L" and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if size is not None:
        _check_pixels(size[0], size[1], max_pixels)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any mode -> RGB; alpha composited on white; 16-bit greyscale scaled to 8 bits. May
    return ``img`` itself when it is already RGB without transparency."""
    if img.mode in _SIXTEEN_BIT_MODES:
        return _sixteen_bit_to_rgb(img)
    if img.has_transparency_data:
        rgba = img.convert("RGBA")  # also applies a palette / L / RGB "transparency" key
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, (0, 0), rgba)
        return out
    if img.mode == "RGB":
        return img
    return img.convert("RGB")


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit greyscale: v -> round(v * 255 / 65535), clipped to 0..255 (PIL's own convert
    clips the raw values, turning everything above 255 white)."""
    transparent = img.info.get("transparency")
    src = img if img.mode in ("I", "I;16") else img.convert("I")
    scaled = src.point(lambda v: v * (255 / 65535) + 0.5)  # linear: C point_transform
    grey = scaled.convert("L").convert("RGB")
    if not isinstance(transparent, int):
        return grey
    alpha = Image.fromarray(((np.asarray(src) != transparent) * 255).astype(np.uint8))
    out = Image.new("RGB", grey.size, _WHITE)
    out.paste(grey, (0, 0), alpha)
    return out


def _reduce(img: Image.Image, target_size: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps both sides >= target_size
    (``Image.reduce`` rounds the output size up)."""
    factor = min(img.width // target_size, img.height // target_size)
    return img.reduce(factor) if factor >= 2 else img


def _apply_orientation(img: Image.Image, *, owned: bool) -> Image.Image:
    """Apply the EXIF orientation. ``owned``: ``img`` is a new image made here (transposed in
    place); otherwise it is the opened file and a transposed copy is returned, which also
    detaches the result from the input. Broken EXIF leaves the image as stored."""
    try:
        if owned:
            ImageOps.exif_transpose(img, in_place=True)
            return img
        return ImageOps.exif_transpose(img)
    except Exception:  # EXIF is metadata: a corrupt block does not spoil the pixels
        return img if owned else img.copy()


# -- messages ---------------------------------------------------------------------------------


def _bytes_text(n: int) -> str:
    if n >= 1 << 20:
        return f"{n:,} bytes ({n / (1 << 20):.3g} MiB)"
    return f"{n:,} bytes"


def _bomb_error(exc: Exception, max_pixels: int) -> ImageError:
    found = _PIL_PIXELS.search(str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    return ImageError(
        413, "image_too_large",
        f"image is {size}; the limit is {max_pixels:,} pixels (refused as a possible "
        "decompression bomb)",
    )


def _invalid(fmt: str, exc: BaseException) -> ImageError:
    reason = str(exc).strip() or type(exc).__name__
    if len(reason) > _MAX_REASON_CHARS:
        reason = reason[:_MAX_REASON_CHARS] + "..."
    what = "image" if fmt == "image" else f"{fmt} image"
    return ImageError(422, "invalid_image", f"cannot decode the {what}: {reason}")


def _sniff(data: bytes) -> str | None:
    """The format the magic bytes claim (allowed formats, and some common refused ones for a
    clearer 415 message). Only used to classify and word errors, never to decode."""
    head = data[:32]
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM":
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIF"
        return None
    for magic, name in (
        (b"\x00\x00\x01\x00", "ICO"),
        (b"8BPS", "PSD"),
        (b"%PDF", "PDF"),
        (b"%!PS", "EPS"),
        (b"\xc5\xd0\xd3\xc6", "EPS"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
        (b"\xff\x4f\xff\x51", "JPEG 2000"),
        (b"\xff\x0a", "JPEG XL"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    ):
        if head.startswith(magic):
            return name
    if head.lstrip().startswith((b"<svg", b"<?xml")):
        return "SVG"
    return None

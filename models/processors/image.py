"""Images: decoding any input safely into RGB, and the transform settings a model was trained
with (saved in a release so the service preprocesses exactly like training).

``load_image`` applies the EXIF orientation and converts every mode (P, L, LA, RGBA, CMYK,
I;16, ...) to RGB; transparent pixels are composited over black. Images over
``max_pixels`` are refused before decoding their pixels (decompression bombs).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.transforms import v2

from models.processors.answers import _read_json
from models.registry import PROCESSORS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """An input that is not a decodable image (message names the source and the reason)."""


def load_image(
    source: str | Path | bytes | BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode ``source`` (path, bytes or binary file) into an RGB ``PIL.Image`` with the EXIF
    orientation applied. Raises ``ImageDecodeError`` naming the source on any failure."""
    name = str(source) if isinstance(source, (str, Path)) else "<bytes>"
    try:
        fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(fp)
            w, h = img.size
            if w <= 0 or h <= 0 or w * h > max_pixels:
                raise ImageDecodeError(
                    f"{name}: image of {w}x{h} pixels exceeds the limit of {max_pixels}"
                )
            img.load()
        img = ImageOps.exif_transpose(img) or img
        return to_rgb(img)
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: image file not found") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(f"{name}: not a readable image ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to RGB; alpha composited over black, 16/32-bit grayscale rescaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = torch.from_numpy(np.asarray(img, dtype=np.float32))
        lo, hi = float(arr.min()), float(arr.max())
        scaled = ((arr - lo) / (hi - lo) * 255.0) if hi > lo else torch.zeros_like(arr)
        img = Image.fromarray(scaled.to(torch.uint8).numpy(), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


@PROCESSORS.register("image_transform")
@dataclass
class ImageTransform:
    """Resize to ``size`` x ``size`` (aspect ratio not kept, as grid-feature models expect),
    convert to float in [0, 1], normalize with ``mean``/``std``. Output: (3, size, size)."""

    size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    _pipeline: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"ImageTransform: size must be >= 16, got {self.size}")
        modes = {"bilinear": v2.InterpolationMode.BILINEAR,
                 "bicubic": v2.InterpolationMode.BICUBIC,
                 "nearest": v2.InterpolationMode.NEAREST}
        if self.interpolation not in modes:
            raise ValueError(f"ImageTransform: interpolation must be one of {sorted(modes)}")
        self.mean = tuple(float(m) for m in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(s) for s in self.std)  # type: ignore[assignment]
        # Two halves, so a server can resize where it decodes and send the compact uint8
        # pixels to a worker that normalizes: __call__ == normalize(resize(img)) exactly.
        self._pipeline = (
            v2.Compose([v2.ToImage(),
                        v2.Resize((self.size, self.size),
                                  interpolation=modes[self.interpolation], antialias=True)]),
            v2.Compose([v2.ToDtype(torch.float32, scale=True),
                        v2.Normalize(list(self.mean), list(self.std))]),
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """(3, size, size) float32 from an RGB image."""
        return self.normalize(self.resize(img))

    def resize(self, img: Image.Image) -> torch.Tensor:
        """The first half: (3, size, size) uint8 pixels of ``img`` (any mode)."""
        out: torch.Tensor = self._pipeline[0](to_rgb(img))
        return out.as_subclass(torch.Tensor)

    def normalize_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """``normalize`` of a stacked uint8 (B, 3, size, size) batch, in one pass; the ops are
        elementwise, so each image comes out exactly as ``normalize`` makes it."""
        if pixels.dtype != torch.uint8 or pixels.dim() != 4 or \
                tuple(pixels.shape[1:]) != (3, self.size, self.size):
            raise ValueError(f"ImageTransform.normalize_batch: expected uint8 (B, 3, {self.size},"
                             f" {self.size}), got {pixels.dtype} {tuple(pixels.shape)}")
        out: torch.Tensor = self._pipeline[1](pixels)
        return out

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """The second half: uint8 (3, size, size) -> normalized float32 (3, size, size)."""
        if pixels.dtype != torch.uint8 or tuple(pixels.shape) != (3, self.size, self.size):
            raise ValueError(f"ImageTransform.normalize: expected uint8 (3, {self.size}, "
                             f"{self.size}), got {pixels.dtype} {tuple(pixels.shape)}")
        out: torch.Tensor = self._pipeline[1](pixels)
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("_pipeline", None)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return {"type": "image_transform", **d}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ImageTransform:
        data = _read_json(path, "image_transform")
        data.pop("type")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from None

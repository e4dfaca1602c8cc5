"""Processors shared by training and the service: text vocabulary, answer space, OCR tokens,
image transform. A release stores each one as ``processor/<name>.json`` with a ``type`` field
naming its registered class, so ``load_processors`` rebuilds them without unpickling.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from models.processors.answers import (
    AnswerSpace,
    normalize_answer,
    soft_score_from_count,
    soft_scores,
)
from models.processors.image import ImageDecodeError, ImageTransform, load_image, to_rgb
from models.processors.ocr import OCRProcessor
from models.processors.text import Vocabulary, tokenize
from models.registry import PROCESSORS

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def save_processors(directory: str | Path, processors: dict[str, Any]) -> None:
    """Write each processor as ``<directory>/<name>.json`` (names: lowercase identifiers)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name, proc in processors.items():
        if not _NAME.match(name):
            raise ValueError(f"processor name {name!r} must match {_NAME.pattern}")
        proc.save(d / f"{name}.json")


def load_processors(directory: str | Path) -> dict[str, Any]:
    """Rebuild every ``<name>.json`` in ``directory`` through the processor registry."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: processor directory not found")
    out: dict[str, Any] = {}
    for f in sorted(d.glob("*.json")):
        if not _NAME.match(f.stem):
            raise ValueError(f"{f}: processor file names must match {_NAME.pattern}")
        cls = PROCESSORS.get(_peek_type(f))
        out[f.stem] = cls.load(f)  # type: ignore[attr-defined]
    return out


def _peek_type(path: Path) -> str:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if not isinstance(kind, str) or kind not in PROCESSORS:
        raise ValueError(f"{path}: field 'type' must name a processor ({PROCESSORS.names()})")
    return kind


__all__ = [
    "AnswerSpace",
    "ImageDecodeError",
    "ImageTransform",
    "OCRProcessor",
    "Vocabulary",
    "load_image",
    "load_processors",
    "normalize_answer",
    "save_processors",
    "soft_score_from_count",
    "soft_scores",
    "to_rgb",
    "tokenize",
]

"""OCR at inference time: rapidocr (ONNX Runtime) with the detection and recognition models
that ship inside its wheel — nothing is downloaded.

``OCREngine()(image) -> list[OCRWord]``: words with relative ``x1, y1, x2, y2`` boxes, in
reading order (top to bottom, then left to right). rapidocr reads text *lines*; a line is
split into words on whitespace and each word gets the part of the line box proportional to
its position in the line's characters (a straight-line approximation, fine for the
horizontal text TextVQA models are trained on).

The engine is built once, on first use, and shared; calls are serialized by a lock, since
rapidocr keeps per-call state on its pipeline object.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class OCRWord:
    word: str
    box: tuple[float, float, float, float]  # relative x1, y1, x2, y2 in [0, 1]
    score: float


class OCREngine:
    def __init__(self, *, min_score: float = 0.5) -> None:
        self.min_score = min_score
        self._engine: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._engine is None:
            from rapidocr import RapidOCR  # heavy import: only when OCR is first needed

            logging.getLogger("RapidOCR").setLevel(logging.WARNING)
            self._engine = RapidOCR()
        return self._engine

    def __call__(self, image: Image.Image) -> list[OCRWord]:
        w, h = image.size
        with self._lock:
            result = self._load()(image.convert("RGB"))
        texts = getattr(result, "txts", None) or ()
        boxes = getattr(result, "boxes", None)
        scores = getattr(result, "scores", None) or ()
        words: list[OCRWord] = []
        if boxes is None:
            return words
        lines = []
        for text, quad, score in zip(texts, boxes, scores, strict=False):
            if float(score) < self.min_score or not str(text).strip():
                continue
            xs = [float(p[0]) for p in quad]
            ys = [float(p[1]) for p in quad]
            lines.append((min(ys), min(xs), str(text), (min(xs), min(ys), max(xs), max(ys)),
                          float(score)))
        for _, _, text, (x1, y1, x2, y2), score in sorted(lines):
            total = max(1, len(text))
            start = 0
            for part in text.split(" "):
                if part:
                    a = x1 + (x2 - x1) * start / total
                    b = x1 + (x2 - x1) * (start + len(part)) / total
                    words.append(OCRWord(part, (_clip(a / w), _clip(y1 / h), _clip(b / w),
                                                _clip(y2 / h)), score))
                start += len(part) + 1
        return words


def _clip(v: float) -> float:
    return min(1.0, max(0.0, v))

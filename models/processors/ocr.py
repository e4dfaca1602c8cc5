"""OCR tokens for open-vocabulary words (LoRRA-style copy).

An OCR engine (Rosetta in TextVQA, rapidocr in the service) gives words with boxes. Most of
those words are in no fixed vocabulary, so each token is represented by what it is made of:

* ``ocr_char_ids`` (K, max_chars): character ids (1-based over ``CHARSET``; 0 = pad, and
  characters outside the set map to ``len(CHARSET) + 1``);
* ``ocr_hash_ids`` (K, max_ngrams): fastText-style hashed character n-grams of ``<word>``
  into ``[1, hash_buckets)`` (FNV-1a, stable across processes and machines; 0 = pad);
* ``ocr_boxes`` (K, 4): relative ``x1, y1, x2, y2`` in [0, 1];
* ``ocr_mask`` (K,): true for real tokens; ``ocr_tokens``: the K' <= K normalized strings.

The copy target (``copy_target``) extends an answer space of size A with K slots: slot
``A + j`` scores like an answer equal to OCR token ``j`` (the official soft score), so a
model that picks a slot answers with that token's text.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from models.processors.answers import AnswerSpace, _read_json, normalize_answer, soft_scores
from models.registry import PROCESSORS

CHARSET = string.ascii_lowercase + string.digits + "'-&.,!?"


def fnv1a(text: str) -> int:
    """32-bit FNV-1a hash of the UTF-8 bytes of ``text`` (deterministic, unlike ``hash``)."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


@PROCESSORS.register("ocr")
class OCRProcessor:
    """Turns OCR words + boxes into fixed-size tensors (see the module docstring)."""

    def __init__(
        self,
        *,
        max_tokens: int = 50,
        max_chars: int = 20,
        hash_buckets: int = 4096,
        ngram_sizes: Sequence[int] = (2, 3, 4),
        max_ngrams: int = 24,
    ) -> None:
        if max_tokens <= 0 or max_chars <= 0 or hash_buckets < 2 or max_ngrams <= 0:
            raise ValueError("OCRProcessor: sizes must be positive (hash_buckets >= 2)")
        self.max_tokens = max_tokens
        self.max_chars = max_chars
        self.hash_buckets = hash_buckets
        self.ngram_sizes = tuple(int(n) for n in ngram_sizes)
        self.max_ngrams = max_ngrams
        self._char_index = {c: i + 1 for i, c in enumerate(CHARSET)}

    @staticmethod
    def normalize_token(token: str) -> str:
        """An OCR word as an answer would be written: the official answer normalization."""
        return normalize_answer(token)

    def char_ids(self, token: str) -> list[int]:
        oov = len(CHARSET) + 1
        return [self._char_index.get(c, oov) for c in token[: self.max_chars]]

    def hash_ids(self, token: str) -> list[int]:
        word = f"<{token}>"
        grams: list[int] = []
        for n in self.ngram_sizes:
            for i in range(max(0, len(word) - n + 1)):
                grams.append(1 + fnv1a(word[i : i + n]) % (self.hash_buckets - 1))
        return grams[: self.max_ngrams]

    def __call__(
        self, tokens: Sequence[str], boxes: Sequence[Sequence[float]] | None = None
    ) -> dict[str, Any]:
        """Tensors for up to ``max_tokens`` tokens; empty tokens after normalization are dropped.

        ``boxes`` (optional) are relative ``x1, y1, x2, y2``, one per token, clamped to [0, 1].
        """
        if boxes is not None and len(boxes) != len(tokens):
            raise ValueError(f"OCR: {len(tokens)} tokens but {len(boxes)} boxes")
        K = self.max_tokens
        char_ids = torch.zeros(K, self.max_chars, dtype=torch.long)
        hash_ids = torch.zeros(K, self.max_ngrams, dtype=torch.long)
        out_boxes = torch.zeros(K, 4, dtype=torch.float32)
        mask = torch.zeros(K, dtype=torch.bool)
        kept: list[str] = []
        for i, raw in enumerate(tokens):
            if len(kept) == K:
                break
            tok = self.normalize_token(raw)
            if not tok:
                continue
            j = len(kept)
            kept.append(tok)
            c = self.char_ids(tok)
            char_ids[j, : len(c)] = torch.tensor(c, dtype=torch.long)
            h = self.hash_ids(tok)
            if h:
                hash_ids[j, : len(h)] = torch.tensor(h, dtype=torch.long)
            if boxes is not None:
                out_boxes[j] = torch.tensor([float(v) for v in boxes[i]]).clamp(0.0, 1.0)
            mask[j] = True
        return {
            "ocr_tokens": kept,
            "ocr_char_ids": char_ids,
            "ocr_hash_ids": hash_ids,
            "ocr_boxes": out_boxes,
            "ocr_mask": mask,
        }

    def copy_target(
        self, space: AnswerSpace, human_answers: Sequence[str], ocr_tokens: Sequence[str]
    ) -> torch.Tensor:
        """Soft target (len(space) + max_tokens,): the answer-space scores, then one score per
        OCR slot (0 for padding slots). ``ocr_tokens`` are the normalized kept tokens."""
        scores = soft_scores(human_answers)
        target = torch.zeros(len(space) + self.max_tokens, dtype=torch.float32)
        target[: len(space)] = space.target(human_answers)
        for j, tok in enumerate(ocr_tokens[: self.max_tokens]):
            target[len(space) + j] = scores.get(tok, 0.0)
        return target

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "ocr",
            "max_tokens": self.max_tokens,
            "max_chars": self.max_chars,
            "hash_buckets": self.hash_buckets,
            "ngram_sizes": list(self.ngram_sizes),
            "max_ngrams": self.max_ngrams,
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> OCRProcessor:
        data = _read_json(path, "ocr")
        data.pop("type")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(f"{path}: {exc}") from None

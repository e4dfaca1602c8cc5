"""Question/caption tokenization and the word vocabulary.

``tokenize`` lowercases, keeps the apostrophe inside words ("what's", "man's"), splits on
everything else that is not a letter or digit, and drops the punctuation (the MMF/Pythia
question tokenizer). The vocabulary is built from training text only, saved as JSON and
loaded back identically, so a release and the trainer agree on every index.

Special tokens and their fixed indices (a contract shared with the models' embeddings):
``<pad>`` = 0, ``<unk>`` = 1, ``<s>`` = 2, ``</s>`` = 3.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from models.processors.answers import _read_json
from models.registry import PROCESSORS

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
SPECIALS: tuple[str, ...] = (PAD, UNK, BOS, EOS)
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def tokenize(text: str) -> list[str]:
    """Lowercased word tokens of ``text`` with punctuation removed (``"What's that?"`` ->
    ``["what's", "that"]``)."""
    return _WORD.findall(text.lower().replace("\u2019", "'"))


@PROCESSORS.register("vocabulary")
class Vocabulary:
    """Word <-> index, with the four special tokens first (see the module docstring)."""

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        if tuple(words[: len(SPECIALS)]) != SPECIALS:
            words = [*SPECIALS, *[w for w in words if w not in SPECIALS]]
        if len(set(words)) != len(words):
            raise ValueError("Vocabulary: duplicate words in the list")
        self.words: list[str] = words
        self.index: dict[str, int] = {w: i for i, w in enumerate(words)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str | Sequence[str]],
        *,
        min_count: int = 1,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Vocabulary of the words in ``texts`` (strings are tokenized, lists taken as tokens),
        ordered by frequency then alphabetically; ``max_size`` counts the special tokens."""
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(tokenize(t) if isinstance(t, str) else t)
        for s in SPECIALS:
            counts.pop(s, None)
        ranked = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                  if c >= min_count]
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(SPECIALS))]
        return cls(ranked)

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: object) -> bool:
        return word in self.index

    def word2idx(self, word: str) -> int:
        return self.index.get(word, UNK_ID)

    def encode(
        self,
        text: str | Sequence[str],
        *,
        max_length: int,
        add_bos: bool = False,
        add_eos: bool = False,
    ) -> tuple[torch.Tensor, int]:
        """Token ids padded with ``<pad>`` to ``max_length``: (ids (max_length,) int64, length).

        Truncation keeps the first tokens; ``</s>`` is kept as the last token when requested,
        so a truncated caption still ends. ``length`` counts the non-pad ids (>= 1 unless the
        text is empty and no specials were requested).
        """
        tokens = tokenize(text) if isinstance(text, str) else list(text)
        ids = [self.word2idx(w) for w in tokens]
        if add_bos:
            ids = [BOS_ID, *ids]
        if add_eos:
            ids = [*ids[: max_length - 1], EOS_ID]
        ids = ids[:max_length]
        out = torch.full((max_length,), PAD_ID, dtype=torch.long)
        if ids:
            out[: len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out, len(ids)

    def decode(self, ids: Iterable[int], *, skip_specials: bool = True) -> str:
        """Words of ``ids`` joined by spaces, stopping at ``</s>``; specials skipped."""
        words: list[str] = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if skip_specials and i in (PAD_ID, BOS_ID):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(words)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "vocabulary", "words": self.words}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        data = _read_json(path, "vocabulary")
        words = data.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{path}: field 'words' must be a list of strings")
        return cls(words)


def load_glove(path: str | Path, vocab: Vocabulary, dim: int) -> tuple[torch.Tensor, int]:
    """Embedding matrix (len(vocab), dim) from a local GloVe-format text file.

    Each line is ``word v1 ... v_dim``. Words of the vocabulary missing from the file keep a
    small random init (N(0, 0.1), seeded by torch's RNG); ``<pad>`` is zero. Returns the
    matrix and the number of vocabulary words found. Never downloads.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: GloVe file not found")
    weight = torch.randn(len(vocab), dim) * 0.1
    weight[PAD_ID] = 0.0
    found = 0
    with p.open(encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip().split(" ")
            if len(parts) < 2:
                continue
            idx = vocab.index.get(parts[0])
            if idx is None:
                continue
            if len(parts) - 1 != dim:
                raise ValueError(
                    f"{p}:{lineno}: word {parts[0]!r} has {len(parts) - 1} values, expected {dim}"
                )
            weight[idx] = torch.tensor([float(x) for x in parts[1:]])
            found += 1
    return weight, found

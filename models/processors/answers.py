"""Answers: the official VQA normalization, soft scores and the answer space.

Normalization is the VQA v2 evaluation code's ``processPunctuation`` followed by
``processDigitArticle`` (GT-Vision-Lab/VQA, vqaEval.py), reproduced rule for rule,
including its quirks:

* a punctuation mark is *deleted* if it touches a space anywhere in the original text
  (``p + " "`` or ``" " + p`` occurs) or if a digit,digit pattern occurs anywhere in
  the text; otherwise it becomes a space (``t-shirt`` -> ``t shirt``, ``1,000 t-shirts``
  -> ``1000 tshirts``). Apostrophes, colons and periods are not in that list;
* periods not followed by a digit are removed, at most 32 of them (the official call passes
  ``re.UNICODE`` (= 32) as the ``count`` argument of ``re.sub``);
* lowercase, split on whitespace; ``none|zero|one..ten`` -> digits (``none`` -> ``0``);
  articles ``a an the`` dropped; the 120-entry contractions map applied word by word.

Soft score of an answer given the 10 human answers: for each annotator, leave them out and
score ``min(1, matches among the other 9 / 3)``; average the 10. With ``c`` matching answers
that is 0, .3, .6, .9, 1.0 for c = 0, 1, 2, 3, >=4 (``soft_score_from_count``).
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from models.registry import PROCESSORS

# The official punctuation list (vqaEval.py ``self.punct``), in its order.
PUNCTUATION: tuple[str, ...] = (
    ";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
    ">", "<", "@", "`", ",", "?", "!",
)  # fmt: skip
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# Official pattern, bug included: "(?!<=\d)" is a negative *lookahead* for the text "<=d",
# so in effect this removes every period that is not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_PERIOD_STRIP_COUNT = 32  # re.UNICODE passed positionally as count by the official code

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contractions map (vqaEval.py ``self.contractions``), entries as published,
# including its oddities ("somebody'd" -> "somebodyd").
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've", "couldnt've": "couldn't've",
    "didnt": "didn't", "doesnt": "doesn't", "dont": "don't", "hadnt": "hadn't",
    "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've",
    "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've",
    "she's": "she's", "shouldve": "should've", "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're",
    "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've",
    "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}  # fmt: skip


def process_punctuation(text: str) -> str:
    """``processPunctuation`` of the official evaluation code (see the module docstring)."""
    out = text
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        # The test reads the *original* text, the replacement acts on the running output.
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, _PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """``processDigitArticle``: lowercase, number words -> digits, drop articles, contractions."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(word)
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


@functools.lru_cache(maxsize=1 << 17)
def normalize_answer(text: str) -> str:
    """The full official normalization of one answer (newlines/tabs to spaces, strip first).

    Memoized: answers repeat a lot (every epoch, every "yes"), and a dataset reader computes
    soft-score targets per sample.
    """
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))


def soft_score_from_count(matches: int, total: int = 10) -> float:
    """Leave-one-out VQA accuracy of an answer that ``matches`` of ``total`` annotators gave.

    Equal to averaging ``min(1, other_matches / 3)`` over the ``total`` leave-one-out subsets:
    the subsets that drop a matching annotator see ``matches - 1``, the others ``matches``.
    """
    if total <= 0:
        return 0.0
    if matches <= 0:
        return 0.0
    with_drop = min(1.0, (matches - 1) / 3.0) * matches
    without = min(1.0, matches / 3.0) * (total - matches)
    return (with_drop + without) / total


def soft_scores(answers: Sequence[str], *, normalize: bool = True) -> dict[str, float]:
    """Soft score of every distinct answer among ``answers`` (the human answers of a question).

    Keys are normalized answers when ``normalize`` is true. Answers that no annotator gave
    score 0 and are absent from the dict.
    """
    keys = [normalize_answer(a) for a in answers] if normalize else list(answers)
    counts = Counter(keys)
    return {a: soft_score_from_count(c, len(keys)) for a, c in counts.items()}


UNK_ANSWER = "<unk>"


@PROCESSORS.register("answer_space")
class AnswerSpace:
    """A fixed answer vocabulary: index <-> normalized answer, and soft-score targets.

    Index 0 is ``<unk>``, which never scores (an answer outside the space contributes nothing
    to the target, as in Pythia). Built from training annotations by frequency:

    * ``top_k``: keep the K most frequent answers (ties broken by the answer text), and/or
    * ``min_count``: keep answers seen at least this many times (Pythia's VQA v2 space is the
      answers seen >= 9 times as ``multiple_choice_answer`` in train+val: 3,129 answers).
    """

    def __init__(self, answers: Sequence[str]) -> None:
        if not answers or answers[0] != UNK_ANSWER:
            answers = [UNK_ANSWER, *[a for a in answers if a != UNK_ANSWER]]
        if len(set(answers)) != len(answers):
            raise ValueError("AnswerSpace: duplicate answers in the list")
        self.answers: list[str] = list(answers)
        self.index: dict[str, int] = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(
        cls,
        answers: Iterable[str],
        *,
        top_k: int | None = None,
        min_count: int = 1,
    ) -> AnswerSpace:
        """Count normalized ``answers`` (one string per occurrence) and keep the frequent ones."""
        counts = Counter(normalize_answer(a) for a in answers)
        counts.pop("", None)
        counts.pop(UNK_ANSWER, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = [a for a, c in ranked if c >= min_count]
        if top_k is not None:
            kept = kept[:top_k]
        return cls(kept)

    def __len__(self) -> int:
        return len(self.answers)

    def __contains__(self, answer: object) -> bool:
        return answer in self.index

    def word2idx(self, answer: str) -> int:
        """Index of a normalized answer; 0 (``<unk>``) when outside the space."""
        return self.index.get(answer, 0)

    def idx2word(self, idx: int) -> str:
        return self.answers[idx]

    def target(self, human_answers: Sequence[str]) -> torch.Tensor:
        """Soft-score target of shape (len(self),), float32; ``<unk>`` always 0."""
        out = torch.zeros(len(self.answers), dtype=torch.float32)
        for answer, score in soft_scores(human_answers).items():
            idx = self.index.get(answer, 0)
            if idx != 0:
                out[idx] = score
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"type": "answer_space", "answers": self.answers}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0))

    @classmethod
    def load(cls, path: str | Path) -> AnswerSpace:
        data = _read_json(path, "answer_space")
        answers = data.get("answers")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path}: field 'answers' must be a list of strings")
        return cls(answers)


def _read_json(path: str | Path, expected_type: str) -> dict[str, Any]:
    """Read a processor JSON file and check its ``type`` field, naming the file on failure."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{p}: no such processor file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("type") != expected_type:
        raise ValueError(f"{p}: field 'type' must be {expected_type!r}")
    return data

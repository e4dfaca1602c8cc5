"""VQA accuracy as the official evaluation code computes it (VQA v2, TextVQA, VizWiz).

One prediction against the human answers of its question (``vqa_accuracy``):

* ``mode="current"`` (default; the official VQA v2 code since 2021): newlines/tabs become
  spaces and both sides are stripped; *only when the human answers disagree* (more than one
  distinct string) are the human answers and the prediction normalized (``processPunctuation``
  then ``processDigitArticle``); matching is exact string equality;
* ``mode="legacy"`` (the code before 2021): the prediction is always normalized; when the
  human answers disagree they get ``processPunctuation`` only.

They differ when all ten annotators wrote the same string: "two" against ten "2" scores 0
(current) or 1 (legacy); normalizing predictions before writing a submission removes that
difference. They also differ where annotators disagree and an answer needs more than
punctuation normalization ("Red" against a normalized "red"), which legacy never matches.

The score is the leave-one-out average of ``min(1, matches / 3)`` over the annotators; a
dataset's accuracy is ``round(100 * mean, 2)``, also per answer type and per question type.
TextVQA normalizes both sides always (its official evaluator); VizWiz normalizes the
prediction always (``legacy`` rule on the prediction) and keys results by image name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.processors.answers import normalize_answer, process_punctuation
from training.registry import METRICS

MODES = ("current", "legacy")


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


_punctuation = functools.lru_cache(maxsize=1 << 16)(process_punctuation)


def _leave_one_out(prediction: str, answers: Sequence[str]) -> float:
    """Average over annotators of min(1, matches among the others / 3)."""
    if not answers:
        raise ValueError("a question needs at least one human answer")
    matches = sum(1 for a in answers if a == prediction)
    total = 0.0
    for a in answers:
        others = matches - (1 if a == prediction else 0)
        total += min(1.0, others / 3.0)
    return total / len(answers)


def vqa_accuracy(prediction: str, answers: Sequence[str], *, mode: str = "current") -> float:
    """VQA accuracy in [0, 1] of one predicted answer (see the module docstring)."""
    if mode == "current":
        pred = _clean(prediction)
        gts = [_clean(a) for a in answers]
        if len(set(gts)) > 1:
            gts = [normalize_answer(a) for a in gts]
            pred = normalize_answer(pred)
        return _leave_one_out(pred, gts)
    if mode == "legacy":
        pred = normalize_answer(prediction)
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [_punctuation(a) for a in gts]
        return _leave_one_out(pred, gts)
    raise ValueError(f"unknown VQA accuracy mode {mode!r}; known: {MODES}")


def textvqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """TextVQA's official evaluator: both sides always normalized."""
    return _leave_one_out(normalize_answer(prediction), [normalize_answer(a) for a in answers])


def vizwiz_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VizWiz: the prediction is always normalized (the legacy VQA rule)."""
    return vqa_accuracy(prediction, answers, mode="legacy")


# dataset -> f(prediction, answers, *, mode) -> accuracy; ``mode`` only matters for VQA v2.
ACCURACY_FUNCTIONS: dict[str, Callable[..., float]] = {
    "vqa2": vqa_accuracy,
    "textvqa": lambda p, a, mode="current": textvqa_accuracy(p, a),
    "vizwiz": lambda p, a, mode="current": vizwiz_accuracy(p, a),
}


@dataclass
class AccuracyAccumulator:
    """Running sums of VQA accuracy, overall and per answer/question type: memory grows with
    the number of *types*, never with the number of questions. Mergeable across DDP ranks."""

    total: float = 0.0
    count: int = 0
    by_answer_type: dict[str, list[float]] = field(default_factory=dict)   # type -> [sum, n]
    by_question_type: dict[str, list[float]] = field(default_factory=dict)

    def add(self, accuracy: float, answer_type: str = "", question_type: str = "") -> None:
        self.total += accuracy
        self.count += 1
        for table, key in ((self.by_answer_type, answer_type),
                           (self.by_question_type, question_type)):
            if key:
                entry = table.setdefault(key, [0.0, 0])
                entry[0] += accuracy
                entry[1] += 1

    def state(self) -> dict[str, Any]:
        return {"total": self.total, "count": self.count,
                "by_answer_type": self.by_answer_type, "by_question_type": self.by_question_type}

    def merge(self, state: dict[str, Any]) -> None:
        self.total += state["total"]
        self.count += state["count"]
        for name in ("by_answer_type", "by_question_type"):
            mine = getattr(self, name)
            for key, (s, n) in state[name].items():
                entry = mine.setdefault(key, [0.0, 0])
                entry[0] += s
                entry[1] += n

    def result(self) -> dict[str, float]:
        """``accuracy``, ``accuracy/<answer type>``, ``accuracy/qtype/<question type>``: each
        ``round(100 * mean, 2)`` as the official code reports them."""
        if self.count == 0:
            return {}
        out = {"accuracy": round(100.0 * self.total / self.count, 2)}
        for key, (s, n) in sorted(self.by_answer_type.items()):
            out[f"accuracy/{key}"] = round(100.0 * s / n, 2)
        for key, (s, n) in sorted(self.by_question_type.items()):
            out[f"accuracy/qtype/{key}"] = round(100.0 * s / n, 2)
        return out


def accuracy_metrics(
    predictions: Iterable[tuple[str, Sequence[str], str, str]],
    *,
    dataset: str = "vqa2",
    mode: str = "current",
) -> dict[str, float]:
    """Accuracy over ``(prediction, human answers, answer_type, question_type)`` tuples."""
    if dataset not in ACCURACY_FUNCTIONS:
        raise ValueError(f"unknown VQA-family dataset {dataset!r}; known: "
                         f"{sorted(ACCURACY_FUNCTIONS)}")
    if mode not in MODES:
        raise ValueError(f"unknown VQA accuracy mode {mode!r}; known: {MODES}")
    fn = ACCURACY_FUNCTIONS[dataset]
    acc = AccuracyAccumulator()
    for prediction, answers, answer_type, question_type in predictions:
        acc.add(fn(prediction, answers, mode=mode), answer_type, question_type)
    return acc.result()


METRICS.register("vqa_accuracy", accuracy_metrics)

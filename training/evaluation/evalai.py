"""EvalAI result files: writers and validators for every format of FORMATS.md.

=================  =============================================  ========================
dataset            result file                                    key that must be unique
=================  =============================================  ========================
vqa2, textvqa      ``[{"question_id": int, "answer": str}]``      question_id
vizwiz             ``[{"image": "VizWiz_<split>_%08d.jpg",        image
                   "answer": str}]``
vizwiz (answer-    ``[{"image": ..., "answerable": float}]``      image
ability)
coco               ``[{"image_id": int, "caption": str}]``        image_id
visdial            ``[{"image_id": int, "round_id": int (1-based),  (image_id, round_id)
                   "ranks": [100 ints, a permutation of 1..100]}]``
=================  =============================================  ========================

Writers normalize answers (the official VQA normalization) before writing, so the current
official evaluator and the pre-2021 one agree where all annotators gave the same answer
("two" against ten "2"); elsewhere the old code still differs, since it normalizes only the
punctuation of the human answers. Validators take the parsed file and
the split's expected keys and refuse, naming the problem and the first offending keys, a
file that misses a key, repeats one, names one outside the split, or has a malformed entry.
VisDial covers the last round of each dialog on test and all rounds on val.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from models.processors.answers import normalize_answer
from training.evaluation.visdial import check_ranks

VIZWIZ_IMAGE = re.compile(r"^VizWiz_(train|val|test)_\d{8}\.jpg$")


class SubmissionError(ValueError):
    """A result file that EvalAI would refuse; the message says why and where."""


# -- building result lists -------------------------------------------------------------------
def vqa_results(question_ids: Iterable[int], answers: Iterable[str]) -> list[dict[str, Any]]:
    """VQA v2 / TextVQA results with normalized answers."""
    return [{"question_id": int(q), "answer": normalize_answer(a)}
            for q, a in zip(question_ids, answers, strict=True)]


def vizwiz_results(images: Iterable[str], answers: Iterable[str]) -> list[dict[str, Any]]:
    return [{"image": str(i), "answer": normalize_answer(a)}
            for i, a in zip(images, answers, strict=True)]


def vizwiz_answerability_results(images: Iterable[str], answerable: Iterable[float]
                                 ) -> list[dict[str, Any]]:
    return [{"image": str(i), "answerable": float(p)}
            for i, p in zip(images, answerable, strict=True)]


def coco_results(image_ids: Iterable[int], captions: Iterable[str]) -> list[dict[str, Any]]:
    return [{"image_id": int(i), "caption": str(c).strip()}
            for i, c in zip(image_ids, captions, strict=True)]


def visdial_results(image_ids: Iterable[int], round_ids: Iterable[int],
                    ranks: Iterable[Sequence[int]]) -> list[dict[str, Any]]:
    """``round_ids`` are 1-based; each ``ranks`` row ranks the 100 options (1 = best)."""
    return [{"image_id": int(i), "round_id": int(r), "ranks": [int(x) for x in rk]}
            for i, r, rk in zip(image_ids, round_ids, ranks, strict=True)]


def write_results(path: str | Path, results: Sequence[Mapping[str, Any]]) -> Path:
    """Write a result list as JSON, atomically (a reader never sees half a file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(list(results), f, separators=(",", ":"), ensure_ascii=False)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def read_results(path: str | Path) -> list[Any]:
    """Parse a result file; SubmissionError when it is missing or not a JSON list (the
    caller names the file)."""
    p = Path(path)
    if not p.is_file():
        raise SubmissionError("file not found")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubmissionError(f"not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise SubmissionError("the top level must be a list of results")
    return data


# -- validation ------------------------------------------------------------------------------
def _entry(entry: Any, i: int, fields: Mapping[str, type | tuple[type, ...]]) -> None:
    if not isinstance(entry, dict):
        raise SubmissionError(f"result [{i}]: expected an object, got {type(entry).__name__}")
    for name, kind in fields.items():
        if name not in entry:
            raise SubmissionError(f"result [{i}]: missing field {name!r}")
        value = entry[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) or not isinstance(value, kinds):
            names = "/".join(k.__name__ for k in kinds)
            raise SubmissionError(f"result [{i}]: field {name!r} must be {names}, "
                                  f"got {value!r}")


def _first(items: Iterable[Any], n: int = 5) -> str:
    out = []
    for x in items:
        out.append(repr(x))
        if len(out) == n:
            break
    return ", ".join(out)


def _cover(results: Sequence[dict[str, Any]], expected: Collection[Hashable],
           key: Callable[[dict[str, Any]], Hashable], what: str) -> dict[Hashable, Any]:
    """Map key -> entry; refuse repeats, keys outside ``expected`` and missing keys."""
    expected_set = set(expected)
    seen: dict[Hashable, Any] = {}
    for i, entry in enumerate(results):
        k = key(entry)
        if k in seen:
            raise SubmissionError(f"result [{i}]: {what} {k!r} is predicted more than once")
        if k not in expected_set:
            raise SubmissionError(f"result [{i}]: {what} {k!r} is not in the split")
        seen[k] = entry
    missing = [k for k in expected if k not in seen]
    if missing:
        raise SubmissionError(f"{len(missing)} {what}s of the split have no prediction "
                              f"(first: {_first(missing)})")
    return seen


def validate_vqa(results: Sequence[Any], question_ids: Collection[int]) -> dict[int, str]:
    """question_id -> answer, for VQA v2 and TextVQA files."""
    for i, e in enumerate(results):
        _entry(e, i, {"question_id": int, "answer": str})
    seen = _cover(results, question_ids, lambda e: e["question_id"], "question")
    return {int(k): v["answer"] for k, v in seen.items()}  # type: ignore[call-overload]


def validate_vizwiz(results: Sequence[Any], images: Collection[str]) -> dict[str, str]:
    """image -> answer."""
    for i, e in enumerate(results):
        _entry(e, i, {"image": str, "answer": str})
        _check_vizwiz_name(e["image"], i)
    seen = _cover(results, images, lambda e: e["image"], "image")
    return {str(k): v["answer"] for k, v in seen.items()}


def validate_vizwiz_answerability(results: Sequence[Any], images: Collection[str]
                                  ) -> dict[str, float]:
    """image -> predicted probability that the question is answerable (in [0, 1])."""
    for i, e in enumerate(results):
        _entry(e, i, {"image": str, "answerable": (int, float)})
        _check_vizwiz_name(e["image"], i)
        if not 0.0 <= float(e["answerable"]) <= 1.0:
            raise SubmissionError(f"result [{i}]: field 'answerable' must be in [0, 1]")
    seen = _cover(results, images, lambda e: e["image"], "image")
    return {str(k): float(v["answerable"]) for k, v in seen.items()}


def _check_vizwiz_name(name: str, i: int) -> None:
    if not VIZWIZ_IMAGE.match(name):
        raise SubmissionError(f"result [{i}]: image {name!r} is not a VizWiz image name "
                              "(VizWiz_<split>_%08d.jpg: 8 digits)")


def validate_coco(results: Sequence[Any], image_ids: Collection[int]) -> dict[int, str]:
    """image_id -> caption (one per image)."""
    for i, e in enumerate(results):
        _entry(e, i, {"image_id": int, "caption": str})
    seen = _cover(results, image_ids, lambda e: e["image_id"], "image")
    return {int(k): v["caption"] for k, v in seen.items()}  # type: ignore[call-overload]


def validate_visdial(results: Sequence[Any], rounds: Collection[tuple[int, int]],
                     num_options: int = 100) -> dict[tuple[int, int], list[int]]:
    """(image_id, round_id) -> ranks; ``rounds`` lists the expected (image_id, 1-based round)
    pairs (see ``visdial_expected_rounds``)."""
    for i, e in enumerate(results):
        _entry(e, i, {"image_id": int, "round_id": int, "ranks": list})
        try:
            check_ranks(e["ranks"], num_options)
        except ValueError as exc:
            raise SubmissionError(f"result [{i}] (image {e['image_id']}, round "
                                  f"{e['round_id']}): {exc}") from None
    seen = _cover(results, rounds, lambda e: (e["image_id"], e["round_id"]), "round")
    return {k: v["ranks"] for k, v in seen.items()}  # type: ignore[misc]


def visdial_expected_rounds(dialogs: Sequence[Mapping[str, Any]], split: str
                            ) -> list[tuple[int, int]]:
    """The (image_id, round_id) pairs a VisDial result must cover: the last round of each
    dialog on test, every round elsewhere."""
    out: list[tuple[int, int]] = []
    for d in dialogs:
        n = len(d["dialog"])
        rounds = [n] if split == "test" else range(1, n + 1)
        out.extend((int(d["image_id"]), r) for r in rounds)
    return out

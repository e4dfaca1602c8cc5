"""VQA v2 reader (official files, see ../shared/FORMATS.md).

Files under ``data_dir``::

    v2_OpenEnded_mscoco_<subtype>_questions.json   subtype: train2014 | val2014 | test2015 |
                                                   test-dev2015
    v2_mscoco_<subtype>_annotations.json           train2014 and val2014 only
    <folder>/COCO_<folder>_%012d.jpg               folder: train2014 | val2014 | test2015

Sample fields (besides the visual ones of ``training.data.base``): ``question_id`` int,
``image_id`` int, ``question``, ``question_ids`` (L,), ``question_length``, ``answers``
(10 strings; empty on test), ``targets`` (A,) soft scores when answers and an answer space
are present, ``question_type`` and ``answer_type`` ("" on test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.processors import AnswerSpace, Vocabulary, normalize_answer
from training.data.base import (
    DatasetError,
    QuestionAnsweringDataset,
    VisualSource,
    answer_fields,
    field,
    question_fields,
    read_json,
    resolve_split,
)
from training.registry import DATASETS


@DATASETS.register("vqa2")
class VQA2Dataset(QuestionAnsweringDataset):
    name = "vqa2"
    # generic split -> (file subtype, image folder)
    splits = {
        "train": ("train2014", "train2014"),
        "val": ("val2014", "val2014"),
        "test": ("test2015", "test2015"),
        "test-dev": ("test-dev2015", "test2015"),
    }

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        visual: VisualSource,
        vocab: Vocabulary,
        answer_space: AnswerSpace | None = None,
        max_question_length: int = 14,
    ) -> None:
        super().__init__(data_dir=data_dir, split=split, visual=visual, vocab=vocab,
                         answer_space=answer_space, max_question_length=max_question_length)
        subtype, folder = self.official_split
        self.questions_file = self.data_dir / f"v2_OpenEnded_mscoco_{subtype}_questions.json"
        self.annotations_file = self.data_dir / f"v2_mscoco_{subtype}_annotations.json"
        self.records = list(_read_questions(self.questions_file))
        self.has_answers = self.annotations_file.is_file()
        if split in ("train", "val") and not self.has_answers:
            raise DatasetError(f"{self.annotations_file}: file not found")
        if self.has_answers:
            _attach_annotations(self.records, self.annotations_file)
        image_dir = self.data_dir / folder
        items = [(image_dir / f"COCO_{folder}_{r['image_id']:012d}.jpg", r["image_id"])
                 for r in self.records]
        self.keys = self.visual.check(
            items, lambda i: f"{self.questions_file}: question {self.records[i]['question_id']}"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        sample: dict[str, Any] = {
            "dataset": self.name,
            "question_id": r["question_id"],
            "image_id": r["image_id"],
            "question_type": r.get("question_type", ""),
            "answer_type": r.get("answer_type", ""),
        }
        sample.update(question_fields(self.vocab, r["question"], self.max_question_length))
        sample.update(answer_fields(self.answer_space, r.get("answers", [])))
        sample.update(self.visual.load(self.keys[index]))
        return sample

    @classmethod
    def build_processors(
        cls, data_dir: str | Path, *, max_answers: int | None = 3129, min_answer_count: int = 1,
        split: str = "train",
    ) -> dict[str, Any]:
        """Question vocabulary and answer space from one split (train by default).

        The answer space counts ``multiple_choice_answer`` per question, as Pythia's VQA v2
        space does (answers seen >= 9 times over train+val give its 3,129 answers).
        """
        subtype, _ = resolve_split(cls.name, split, cls.splits)
        d = Path(data_dir)
        records = list(_read_questions(d / f"v2_OpenEnded_mscoco_{subtype}_questions.json"))
        _attach_annotations(records, d / f"v2_mscoco_{subtype}_annotations.json")
        vocab = Vocabulary.build(r["question"] for r in records)
        space = AnswerSpace.build((r["multiple_choice_answer"] for r in records),
                                  top_k=max_answers, min_count=min_answer_count)
        return {"vocab": vocab, "answer_space": space}


def _read_questions(path: Path) -> Iterator[dict[str, Any]]:
    data = read_json(path)
    questions = field(data, "questions", list, str(path))
    for i, q in enumerate(questions):
        where = f"{path}: questions[{i}]"
        qid = field(q, "question_id", int, where)
        where = f"{path}: question {qid}"
        yield {
            "question_id": qid,
            "image_id": field(q, "image_id", int, where),
            "question": field(q, "question", str, where),
        }


def _attach_annotations(records: list[dict[str, Any]], path: Path) -> None:
    """Add answers, types and multiple_choice_answer to each question record, in place."""
    data = read_json(path)
    annotations = field(data, "annotations", list, str(path))
    by_qid: dict[int, dict[str, Any]] = {}
    for i, a in enumerate(annotations):
        qid = field(a, "question_id", int, f"{path}: annotations[{i}]")
        where = f"{path}: annotation of question {qid}"
        answers = field(a, "answers", list, where)
        texts = [field(x, "answer", str, f"{where}: answers[{j}]") for j, x in enumerate(answers)]
        if not texts:
            raise DatasetError(f"{where}: field 'answers' is empty")
        by_qid[qid] = {
            "answers": texts,
            "question_type": field(a, "question_type", str, where),
            "answer_type": field(a, "answer_type", str, where),
            "multiple_choice_answer": normalize_answer(
                field(a, "multiple_choice_answer", str, where)),
        }
    for r in records:
        ann = by_qid.get(r["question_id"])
        if ann is None:
            raise DatasetError(f"{path}: no annotation for question {r['question_id']}")
        r.update(ann)


def load_ground_truth(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Question records of a split with their annotations, reading no image.

    ``split`` is an official subtype (``val2014``) or a generic name (``val``). Records:
    ``question_id``, ``image_id``, ``question``, ``answers``, ``question_type``,
    ``answer_type``, ``multiple_choice_answer``.
    """
    official = {sub: sub for sub, _ in VQA2Dataset.splits.values()}
    subtype = official.get(split) or resolve_split("vqa2", split, VQA2Dataset.splits)[0]
    d = Path(data_dir)
    records = list(_read_questions(d / f"v2_OpenEnded_mscoco_{subtype}_questions.json"))
    _attach_annotations(records, d / f"v2_mscoco_{subtype}_annotations.json")
    return records

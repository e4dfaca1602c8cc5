"""VizWiz VQA reader (official files, see ../shared/FORMATS.md).

Files under ``data_dir``::

    Annotations/<split>.json           a list of {image, question, answers x10, answer_type,
                                       answerable}; test: only image and question
    <split>/VizWiz_<split>_%08d.jpg    images (8 digits; the name is the record's key)

Sample fields: ``question_id`` (the record's index in the file), ``image_name`` (str, the
record's ``image``: the key of VizWiz results), ``image_id`` (the same name), question fields,
``answers``, ``targets`` (A,), ``answer_type``, ``answerable`` (1/0; -1 on test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.processors import AnswerSpace, Vocabulary
from training.data.base import (
    DatasetError,
    QuestionAnsweringDataset,
    VisualSource,
    answer_fields,
    field,
    majority,
    question_fields,
    read_json,
    resolve_split,
)
from training.registry import DATASETS


@DATASETS.register("vizwiz")
class VizWizDataset(QuestionAnsweringDataset):
    name = "vizwiz"
    splits = {"train": "train", "val": "val", "test": "test"}

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
        self.annotations_file = self.data_dir / "Annotations" / f"{split}.json"
        self.records = list(_read(self.annotations_file, require_answers=split != "test"))
        image_dir = self.data_dir / self.official_split
        items = [(image_dir / r["image"], r["image"]) for r in self.records]
        self.keys = self.visual.check(
            items, lambda i: f"{self.annotations_file}: record {i} ({self.records[i]['image']})"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        sample: dict[str, Any] = {
            "dataset": self.name,
            "question_id": index,
            "image_id": r["image"],
            "image_name": r["image"],
            "answer_type": r.get("answer_type", ""),
            "answerable": r.get("answerable", -1),
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
        """Question vocabulary and answer space (majority answers of ``split``)."""
        resolve_split(cls.name, split, cls.splits)
        records = list(_read(Path(data_dir) / "Annotations" / f"{split}.json",
                             require_answers=True))
        vocab = Vocabulary.build(r["question"] for r in records)
        space = AnswerSpace.build((majority(r["answers"]) for r in records),
                                  top_k=max_answers, min_count=min_answer_count)
        return {"vocab": vocab, "answer_space": space}


def _read(path: Path, *, require_answers: bool) -> Iterator[dict[str, Any]]:
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: the top level must be a list of records")
    for i, rec in enumerate(data):
        image = field(rec, "image", str, f"{path}: record {i}")
        where = f"{path}: record {i} ({image})"
        if "/" in image or "\\" in image or image.startswith("."):
            raise DatasetError(f"{where}: field 'image' must be a plain file name")
        out: dict[str, Any] = {"image": image, "question": field(rec, "question", str, where)}
        answers = field(rec, "answers", list, where, optional=not require_answers)
        if answers is not None:
            out["answers"] = [field(a, "answer", str, f"{where}: answers[{j}]")
                              for j, a in enumerate(answers)]
            out["answer_type"] = field(rec, "answer_type", str, where)
            answerable = field(rec, "answerable", int, where)
            if answerable not in (0, 1):
                raise DatasetError(f"{where}: field 'answerable' must be 0 or 1")
            out["answerable"] = answerable
        yield out


def load_ground_truth(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Records (``image``, ``question``, ``answers``, ``answer_type``, ``answerable``) of a
    split that has answers, reading no image."""
    resolve_split("vizwiz", split, VizWizDataset.splits)
    return list(_read(Path(data_dir) / "Annotations" / f"{split}.json", require_answers=True))

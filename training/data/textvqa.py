"""TextVQA reader (official files, see ../shared/FORMATS.md), with Rosetta OCR tokens.

Files under ``data_dir``::

    TextVQA_0.5.1_<split>.json              split: train | val | test (no answers on test)
    TextVQA_Rosetta_OCR_v0.2_<split>.json   one entry per image: ocr_tokens, ocr_info boxes
    train_images/<image_id>.jpg             train and val images
    test_images/<image_id>.jpg              test images

Sample fields: as VQA v2 (``question_id`` int, ``image_id`` str, question fields, ``answers``)
plus the OCR fields of ``models.processors.ocr`` (``ocr_tokens`` list of normalized words,
``ocr_char_ids`` (K, C), ``ocr_hash_ids`` (K, G), ``ocr_boxes`` (K, 4), ``ocr_mask`` (K,)),
and ``targets`` (A + K,): the answer-space soft scores then one per OCR slot (copy).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from models.processors import AnswerSpace, OCRProcessor, Vocabulary
from training.data.base import (
    DatasetError,
    QuestionAnsweringDataset,
    VisualSource,
    field,
    majority,
    question_fields,
    read_json,
    resolve_split,
    string_list,
)
from training.registry import DATASETS


@DATASETS.register("textvqa")
class TextVQADataset(QuestionAnsweringDataset):
    name = "textvqa"
    splits = {"train": "train_images", "val": "train_images", "test": "test_images"}

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        visual: VisualSource,
        vocab: Vocabulary,
        answer_space: AnswerSpace | None = None,
        ocr: OCRProcessor | None = None,
        max_question_length: int = 14,
    ) -> None:
        super().__init__(data_dir=data_dir, split=split, visual=visual, vocab=vocab,
                         answer_space=answer_space, max_question_length=max_question_length)
        self.ocr = ocr or OCRProcessor()
        self.questions_file = self.data_dir / f"TextVQA_0.5.1_{split}.json"
        self.ocr_file = self.data_dir / f"TextVQA_Rosetta_OCR_v0.2_{split}.json"
        self.records = list(_read_questions(self.questions_file, require_answers=split != "test"))
        self.ocr_by_image = _read_ocr(self.ocr_file)
        for r in self.records:
            if r["image_id"] not in self.ocr_by_image:
                raise DatasetError(f"{self.ocr_file}: no OCR entry for image {r['image_id']} "
                                   f"(question {r['question_id']})")
        image_dir = self.data_dir / self.official_split
        items = [(image_dir / f"{r['image_id']}.jpg", r["image_id"]) for r in self.records]
        self.keys = self.visual.check(
            items, lambda i: f"{self.questions_file}: question {self.records[i]['question_id']}"
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r = self.records[index]
        tokens, boxes = self.ocr_by_image[r["image_id"]]
        sample: dict[str, Any] = {
            "dataset": self.name,
            "question_id": r["question_id"],
            "image_id": r["image_id"],
        }
        sample.update(question_fields(self.vocab, r["question"], self.max_question_length))
        sample.update(self.ocr(tokens, boxes))
        answers = r.get("answers") or []
        sample["answers"] = answers
        if answers and self.answer_space is not None:
            sample["targets"] = self.ocr.copy_target(self.answer_space, answers,
                                                     sample["ocr_tokens"])
        sample.update(self.visual.load(self.keys[index]))
        return sample

    @classmethod
    def extra_processors(cls, processors: dict[str, Any]) -> dict[str, Any]:
        return {"ocr": processors.get("ocr")}

    @classmethod
    def processors_from_config(cls, cfg: Any, name: str) -> dict[str, Any]:
        procs = super().processors_from_config(cfg, name)
        procs["ocr"] = OCRProcessor(**cfg.datasets[name].ocr)
        return procs

    @classmethod
    def build_processors(
        cls, data_dir: str | Path, *, max_answers: int | None = 3996, min_answer_count: int = 1,
        split: str = "train",
    ) -> dict[str, Any]:
        """Question vocabulary and the fixed answer space (majority answers of ``split``)."""
        resolve_split(cls.name, split, cls.splits)
        records = list(_read_questions(Path(data_dir) / f"TextVQA_0.5.1_{split}.json",
                                       require_answers=True))
        vocab = Vocabulary.build(r["question"] for r in records)
        space = AnswerSpace.build((majority(r["answers"]) for r in records),
                                  top_k=max_answers, min_count=min_answer_count)
        return {"vocab": vocab, "answer_space": space}


def _read_questions(path: Path, *, require_answers: bool) -> Iterator[dict[str, Any]]:
    data = read_json(path)
    records = field(data, "data", list, str(path))
    for i, q in enumerate(records):
        qid = field(q, "question_id", int, f"{path}: data[{i}]")
        where = f"{path}: question {qid}"
        rec = {
            "question_id": qid,
            "image_id": field(q, "image_id", str, where),
            "question": field(q, "question", str, where),
        }
        answers = string_list(q, "answers", where, optional=not require_answers)
        if answers is not None:
            rec["answers"] = answers
        yield rec


def _read_ocr(path: Path) -> dict[str, tuple[list[str], list[list[float]]]]:
    """image_id -> (tokens, boxes as relative x1,y1,x2,y2), from a Rosetta OCR file."""
    data = read_json(path)
    entries = field(data, "data", list, str(path))
    out: dict[str, tuple[list[str], list[list[float]]]] = {}
    for i, e in enumerate(entries):
        image_id = field(e, "image_id", str, f"{path}: data[{i}]")
        where = f"{path}: OCR of image {image_id}"
        info = field(e, "ocr_info", list, where)
        tokens: list[str] = []
        boxes: list[list[float]] = []
        for j, item in enumerate(info):
            w = f"{where}: ocr_info[{j}]"
            tokens.append(field(item, "word", str, w))
            bb = field(item, "bounding_box", dict, w)
            x = float(field(bb, "top_left_x", (int, float), f"{w}.bounding_box"))
            y = float(field(bb, "top_left_y", (int, float), f"{w}.bounding_box"))
            bw = float(field(bb, "width", (int, float), f"{w}.bounding_box"))
            bh = float(field(bb, "height", (int, float), f"{w}.bounding_box"))
            boxes.append([x, y, x + bw, y + bh])
        if not info:  # some entries carry only ocr_tokens
            tokens = string_list(e, "ocr_tokens", where, optional=True) or []
            boxes = [[0.0, 0.0, 0.0, 0.0] for _ in tokens]
        out[image_id] = (tokens, boxes)
    return out


def load_ground_truth(data_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """Question records (``question_id``, ``image_id``, ``question``, ``answers``) of a split
    that has answers, reading no image."""
    resolve_split("textvqa", split, TextVQADataset.splits)
    return list(_read_questions(Path(data_dir) / f"TextVQA_0.5.1_{split}.json",
                                require_answers=True))

"""VisDial v1.0 reader (official files, see ../shared/FORMATS.md).

Files under ``data_dir``::

    visdial_1.0_<split>.json                 split: train | val | test
    visdial_1.0_val_dense_annotations.json   dense relevance of one round per val image
    visdial_1.0_train_dense_sample.json      the same for a sample of train dialogs (optional;
                                             its lists are keyed ``relevance``, val's
                                             ``gt_relevance``: either key is read in both)
    train2014/COCO_train2014_%012d.jpg, VisualDialog_val2018/VisualDialog_val2018_%012d.jpg,
    VisualDialog_test2018/VisualDialog_test2018_%012d.jpg

One item per dialog. R = ``num_rounds`` (10), O = ``num_options`` (100). Sample fields:

* ``image_id`` int, ``caption`` str, ``rounds`` int (rounds present: 10, or 1-10 on test);
* ``question_ids`` (R, Lq), ``question_length`` (R,) — zero rows past ``rounds``;
* ``answer_ids`` (R, La) = ``<s> words </s>``, ``answer_length`` (R,) — zeros where unknown
  (the last test round);
* ``history_ids`` (R, Lh): row 0 the caption, row r the question and answer of round r-1
  (the starter code's per-round history; a model reads rows 0..r for round r);
* ``options_ids`` (R, O, La), ``options_length`` (R, O); ``options_mask`` (R,) true where the
  round has options (all rounds on train/val, only the last on test);
* ``gt_index`` (R,) int64, -1 where unknown; ``round_mask`` (R,) bool;
* ``gt_relevance`` (O,) float32 and ``relevance_round`` (0-based, -1 if none) on val and
  train when the split's dense file is present (zeros and -1 for a dialog without one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.processors import Vocabulary
from models.processors.text import PAD_ID
from training.data.base import (
    BaseDataset,
    DatasetError,
    VisualSource,
    field,
    read_json,
    resolve_split,
    string_list,
)
from training.registry import DATASETS


@DATASETS.register("visdial")
class VisDialDataset(BaseDataset):
    name = "visdial"
    # generic split -> (image folder, image file prefix)
    splits = {
        "train": ("train2014", "COCO_train2014_"),
        "val": ("VisualDialog_val2018", "VisualDialog_val2018_"),
        "test": ("VisualDialog_test2018", "VisualDialog_test2018_"),
    }

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        visual: VisualSource,
        vocab: Vocabulary,
        num_rounds: int = 10,
        num_options: int = 100,
        max_question_length: int = 20,
        max_answer_length: int = 20,
        max_history_length: int = 40,
    ) -> None:
        super().__init__(data_dir=data_dir, split=split, visual=visual)
        self.vocab = vocab
        self.R, self.O = num_rounds, num_options
        self.Lq, self.La, self.Lh = max_question_length, max_answer_length, max_history_length
        self.file = self.data_dir / f"visdial_1.0_{split}.json"
        self.questions, self.answers, self.dialogs = _read(
            self.file, split=split, num_rounds=num_rounds, num_options=num_options
        )
        # Every string is tokenized once; rows are gathered per sample.
        self.question_pool, self.question_len = self._pool(self.questions, self.Lq, False)
        self.answer_pool, self.answer_len = self._pool(self.answers, self.La, True)
        self.relevance: dict[int, tuple[int, list[float]]] = {}
        dense = dense_file(self.data_dir, split)
        if dense is not None and dense.is_file():
            self.relevance = _read_dense(dense, {d["image_id"] for d in self.dialogs},
                                         num_rounds=num_rounds, num_options=num_options)
        folder, prefix = self.official_split
        items = [(self.data_dir / folder / f"{prefix}{d['image_id']:012d}.jpg", d["image_id"])
                 for d in self.dialogs]
        self.keys = self.visual.check(
            items, lambda i: f"{self.file}: dialog of image {self.dialogs[i]['image_id']}"
        )

    def _pool(self, texts: list[str], length: int, bos_eos: bool
              ) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.full((len(texts), length), PAD_ID, dtype=torch.long)
        lens = torch.zeros(len(texts), dtype=torch.long)
        for i, t in enumerate(texts):
            ids[i], lens[i] = self.vocab.encode(t, max_length=length, add_bos=bos_eos,
                                                add_eos=bos_eos)
        return ids, lens

    def __len__(self) -> int:
        return len(self.dialogs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        d = self.dialogs[index]
        R, O, La = self.R, self.O, self.La  # noqa: E741 (shape letters)
        rounds: list[dict[str, Any]] = d["dialog"]
        n = len(rounds)
        q_ids = torch.zeros(R, self.Lq, dtype=torch.long)
        q_len = torch.zeros(R, dtype=torch.long)
        a_ids = torch.zeros(R, La, dtype=torch.long)
        a_len = torch.zeros(R, dtype=torch.long)
        opt_ids = torch.zeros(R, O, La, dtype=torch.long)
        opt_len = torch.zeros(R, O, dtype=torch.long)
        opt_mask = torch.zeros(R, dtype=torch.bool)
        gt = torch.full((R,), -1, dtype=torch.long)
        hist = torch.zeros(R, self.Lh, dtype=torch.long)
        hist[0], _ = self.vocab.encode(d["caption"], max_length=self.Lh)
        for r, rd in enumerate(rounds):
            q = rd["question"]
            q_ids[r], q_len[r] = self.question_pool[q], self.question_len[q]
            a = rd.get("answer")
            if a is not None:
                a_ids[r], a_len[r] = self.answer_pool[a], self.answer_len[a]
            if rd.get("answer_options") is not None:
                idx = torch.tensor(rd["answer_options"], dtype=torch.long)
                opt_ids[r], opt_len[r] = self.answer_pool[idx], self.answer_len[idx]
                opt_mask[r] = True
            if rd.get("gt_index") is not None:
                gt[r] = rd["gt_index"]
            if r + 1 < R and rd.get("answer") is not None:
                words = (self.questions[rd["question"]] + " " + self.answers[rd["answer"]])
                hist[r + 1], _ = self.vocab.encode(words, max_length=self.Lh)
        sample: dict[str, Any] = {
            "dataset": self.name,
            "image_id": d["image_id"],
            "caption": d["caption"],
            "rounds": n,
            "question_ids": q_ids,
            "question_length": q_len,
            "answer_ids": a_ids,
            "answer_length": a_len,
            "history_ids": hist,
            "options_ids": opt_ids,
            "options_length": opt_len,
            "options_mask": opt_mask,
            "gt_index": gt,
            "round_mask": torch.arange(R) < n,
        }
        rel = self.relevance.get(d["image_id"])
        if self.relevance:
            sample["relevance_round"] = rel[0] if rel else -1
            sample["gt_relevance"] = (torch.tensor(rel[1], dtype=torch.float32) if rel
                                      else torch.zeros(O, dtype=torch.float32))
        sample.update(self.visual.load(self.keys[index]))
        return sample

    @classmethod
    def from_config(cls, cfg: Any, name: str, split: str, processors: dict[str, Any]
                    ) -> VisDialDataset:
        d = cfg.datasets[name]
        return cls(data_dir=d.data_dir, split=split, visual=VisualSource.from_config(cfg, name),
                   vocab=processors["vocab"], max_question_length=d.max_question_length,
                   max_answer_length=d.max_answer_length,
                   max_history_length=d.max_history_length)

    @classmethod
    def processors_from_config(cls, cfg: Any, name: str) -> dict[str, Any]:
        d = cfg.datasets[name]
        return cls.build_processors(d.data_dir, min_word_count=d.min_word_count,
                                    split=d.train_split)

    @classmethod
    def build_processors(cls, data_dir: str | Path, *, min_word_count: int = 1,
                         split: str = "train") -> dict[str, Any]:
        """One vocabulary over the captions, questions and answers of ``split``."""
        resolve_split(cls.name, split, cls.splits)
        questions, answers, dialogs = _read(Path(data_dir) / f"visdial_1.0_{split}.json",
                                            split=split, num_rounds=10, num_options=100)
        texts = [*questions, *answers, *(d["caption"] for d in dialogs)]
        return {"vocab": Vocabulary.build(texts, min_count=min_word_count)}


def _read(path: Path, *, split: str, num_rounds: int, num_options: int
          ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    raw = read_json(path)
    data = field(raw, "data", dict, str(path))
    questions = string_list(data, "questions", f"{path}: data")
    answers = string_list(data, "answers", f"{path}: data")
    assert questions is not None and answers is not None
    dialogs = field(data, "dialogs", list, f"{path}: data")
    test = split == "test"
    out: list[dict[str, Any]] = []
    for i, d in enumerate(dialogs):
        image_id = field(d, "image_id", int, f"{path}: dialogs[{i}]")
        where = f"{path}: dialog of image {image_id}"
        caption = field(d, "caption", str, where)
        rounds = field(d, "dialog", list, where)
        if not 1 <= len(rounds) <= num_rounds or (not test and len(rounds) != num_rounds):
            raise DatasetError(f"{where}: field 'dialog' has {len(rounds)} rounds, expected "
                               f"{'1-' if test else ''}{num_rounds}")
        parsed = []
        for r, rd in enumerate(rounds):
            w = f"{where}: round {r + 1}"
            last = r == len(rounds) - 1
            q = _index(rd, "question", len(questions), w)
            a = _index(rd, "answer", len(answers), w, optional=test and last)
            opts = None
            if not test or last:
                opts = field(rd, "answer_options", list, w, optional=test and not last)
                if opts is not None:
                    if len(opts) != num_options:
                        raise DatasetError(f"{w}: field 'answer_options' has {len(opts)} "
                                           f"entries, expected {num_options}")
                    for o in opts:
                        if isinstance(o, bool) or not isinstance(o, int) \
                                or not 0 <= o < len(answers):
                            raise DatasetError(f"{w}: field 'answer_options' holds {o!r}, not "
                                               f"an index into 'answers'")
            gt = None
            if not test:
                gt = field(rd, "gt_index", int, w)
                if not 0 <= gt < num_options:
                    raise DatasetError(
                        f"{w}: field 'gt_index' {gt} is outside 0..{num_options - 1}")
                if opts is not None and a is not None and opts[gt] != a:
                    raise DatasetError(f"{w}: answer_options[gt_index] is not the answer")
            parsed.append({"question": q, "answer": a, "answer_options": opts, "gt_index": gt})
        if test and parsed[-1]["answer_options"] is None:
            raise DatasetError(f"{where}: the last test round needs 'answer_options'")
        out.append({"image_id": image_id, "caption": caption, "dialog": parsed})
    return questions, answers, out


def _index(rd: Any, name: str, size: int, where: str, *, optional: bool = False) -> int | None:
    value = field(rd, name, int, where, optional=optional)
    if value is not None and not 0 <= value < size:
        raise DatasetError(f"{where}: field {name!r} index {value} is outside 0..{size - 1}")
    return value


DENSE_FILES = {"val": "visdial_1.0_val_dense_annotations.json",
               "train": "visdial_1.0_train_dense_sample.json"}


def dense_file(data_dir: Path, split: str) -> Path | None:
    """The split's dense relevance file (which may not exist); None for test."""
    name = DENSE_FILES.get(split)
    return data_dir / name if name else None


def _read_dense(path: Path, image_ids: set[int], *, num_rounds: int, num_options: int
                ) -> dict[int, tuple[int, list[float]]]:
    """image_id -> (0-based round, relevance of each option)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DatasetError(f"{path}: the top level must be a list")
    out: dict[int, tuple[int, list[float]]] = {}
    for i, e in enumerate(data):
        image_id = field(e, "image_id", int, f"{path}: [{i}]")
        where = f"{path}: image {image_id}"
        if image_id not in image_ids:
            raise DatasetError(f"{where}: no such dialog in the split")
        round_id = field(e, "round_id", int, where)
        if not 1 <= round_id <= num_rounds:
            raise DatasetError(f"{where}: field 'round_id' {round_id} is outside 1..{num_rounds}")
        key = "gt_relevance" if isinstance(e, dict) and "gt_relevance" in e else "relevance"
        rel = field(e, key, list, where)
        if len(rel) != num_options or not all(isinstance(v, (int, float)) and
                                              not isinstance(v, bool) for v in rel):
            raise DatasetError(f"{where}: field {key!r} must be {num_options} numbers")
        out[image_id] = (round_id - 1, [float(v) for v in rel])
    return out


def load_ground_truth(data_dir: str | Path, split: str, *, num_rounds: int = 10,
                      num_options: int = 100) -> dict[str, Any]:
    """A split's dialogs without images: ``{"dialogs": [...], "answers": [...],
    "questions": [...], "relevance": {image_id: (0-based round, [O floats])}}``; relevance is
    read from the split's dense file (``DENSE_FILES``) when present."""
    resolve_split("visdial", split, VisDialDataset.splits)
    d = Path(data_dir)
    questions, answers, dialogs = _read(d / f"visdial_1.0_{split}.json", split=split,
                                        num_rounds=num_rounds, num_options=num_options)
    dense = dense_file(d, split)
    relevance = (_read_dense(dense, {x["image_id"] for x in dialogs}, num_rounds=num_rounds,
                             num_options=num_options)
                 if dense is not None and dense.is_file() else {})
    return {"questions": questions, "answers": answers, "dialogs": dialogs,
            "relevance": relevance}

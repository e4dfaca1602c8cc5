"""What every dataset reader shares: official-file loading with field-level errors, the
image source (raw images or a feature store), and the sample contract.

Sample contract (a dict per item; ``training.data.collate.collate`` batches them):

* visual input, one of
    - raw images: ``"image"`` float32 (3, S, S), S = ``model.image_size``, normalized;
    - features:   ``"image_features"`` (N, D) in the store's dtype (float16 or float32),
      ``"image_feature_mask"`` bool (N,),
      ``"image_boxes"`` float32 (N, 4) relative x1,y1,x2,y2 (zeros for grid features);
* ``"image_id"`` (int or str as in the official file), ``"dataset"`` (registered name),
  and the task fields each reader documents.

Errors: a malformed or missing file, a missing or mistyped field, a missing image or
feature, or an unknown split raises ``DatasetError`` at construction, naming the file, the
record (its index and id) and the field. Nothing is checked lazily in ``__getitem__``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from models.processors import ImageTransform, load_image


class DatasetError(ValueError):
    """A dataset that cannot be read; the message names the file, record and field."""


def read_json(path: Path) -> Any:
    """Parse an official JSON file, naming it in any error."""
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None


def field(
    record: Mapping[str, Any],
    name: str,
    kind: type | tuple[type, ...],
    where: str,
    *,
    optional: bool = False,
) -> Any:
    """``record[name]`` checked to be of ``kind``; ``where`` describes file and record.

    ``bool`` never passes for ``int`` (JSON true is not a question id).
    """
    if not isinstance(record, Mapping):
        raise DatasetError(f"{where}: expected an object, got {type(record).__name__}")
    if name not in record:
        if optional:
            return None
        raise DatasetError(f"{where}: missing field {name!r}")
    value = record[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds)
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise DatasetError(
            f"{where}: field {name!r} must be {names}, got {type(value).__name__}"
        )
    return value


def string_list(record: Mapping[str, Any], name: str, where: str, *, length: int | None = None,
                optional: bool = False) -> list[str] | None:
    """A list-of-strings field, optionally of an exact length."""
    value = field(record, name, list, where, optional=optional)
    if value is None:
        return None
    if not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where}: field {name!r} must be a list of strings")
    if length is not None and len(value) != length:
        raise DatasetError(f"{where}: field {name!r} must have {length} entries, "
                           f"got {len(value)}")
    return value


def resolve_split(dataset: str, split: str, splits: Mapping[str, Any]) -> Any:
    """The official name/settings of a generic split, or DatasetError listing known splits."""
    if split not in splits:
        raise DatasetError(
            f"{dataset}: unknown split {split!r}; known splits: {', '.join(sorted(splits))}"
        )
    return splits[split]


class VisualSource:
    """Where pixels or features of an image come from (see the module docstring).

    ``store`` is a feature-store path (``training.data.feature_store.FeatureStore``) or None
    for raw images. With a store, the key of an image is its file name without extension,
    falling back to ``str(image_id)`` (the bottom-up-attention TSV keys by id).
    """

    def __init__(
        self,
        *,
        store: str | Path | None = None,
        transform: ImageTransform | None = None,
        max_features: int | None = None,
    ) -> None:
        self.store_path = Path(store) if store else None
        self.transform = transform or ImageTransform()
        self.max_features = max_features
        self._store: Any = None

    @classmethod
    def from_config(cls, cfg: Any, name: str) -> VisualSource:
        """Raw images at ``model.image_size``, or ``datasets.<name>.features`` if set."""
        d = cfg.datasets[name]
        return cls(store=d.get("features"),
                   transform=ImageTransform(size=int(cfg.model.image_size)),
                   max_features=d.get("max_features"))

    @property
    def uses_features(self) -> bool:
        return self.store_path is not None

    def store(self) -> Any:
        if self._store is None:
            from training.data.feature_store import FeatureStore

            assert self.store_path is not None
            self._store = FeatureStore(self.store_path)
        return self._store

    def key(self, image_path: Path, image_id: Any) -> str:
        """The feature-store key of an image; DatasetError if the store has neither key."""
        store = self.store()
        if image_path.stem in store:
            return image_path.stem
        if str(image_id) in store:
            return str(image_id)
        raise DatasetError(
            f"{self.store_path}: no features for image {image_path.name} "
            f"(looked for keys {image_path.stem!r} and {str(image_id)!r})"
        )

    def check(self, items: Sequence[tuple[Path, Any]], where: Callable[[int], str]) -> list[str]:
        """Verify every image (file or feature key) exists; return the per-item keys.

        ``items`` are (image path, image id) pairs; ``where(i)`` names the record of item i.
        """
        keys: list[str] = []
        if self.uses_features:
            for i, (path, image_id) in enumerate(items):
                try:
                    keys.append(self.key(path, image_id))
                except DatasetError as exc:
                    raise DatasetError(f"{where(i)}: {exc}") from None
            return keys
        seen: dict[Path, bool] = {}
        for i, (path, _) in enumerate(items):
            ok = seen.get(path)
            if ok is None:
                ok = seen[path] = path.is_file()
            if not ok:
                raise DatasetError(f"{where(i)}: image file not found: {path}")
            keys.append(str(path))
        return keys

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """Visual fields of one image (see the sample contract)."""
        if not self.uses_features:
            return {"image": self.transform(load_image(key))}
        arrays = self.store().get(key)
        feats = arrays["features"]
        n = feats.shape[0] if self.max_features is None else min(feats.shape[0],
                                                                 self.max_features)
        # The store hands out read-only views on its memory map; this is the one copy, into
        # a tensor the batch can own. The store's dtype is kept (float16 halves the bytes
        # moved to the GPU); models cast to their compute dtype on the device.
        features = torch.from_numpy(np.array(feats[:n]))
        boxes_arr = arrays.get("boxes")
        if boxes_arr is not None:
            attrs = self.store().attrs(key)
            w = float(attrs.get("image_w") or 1.0)
            h = float(attrs.get("image_h") or 1.0)
            scale = np.array([w, h, w, h], dtype=np.float32)
            boxes = torch.from_numpy(np.asarray(boxes_arr[:n], dtype=np.float32) / scale)
        else:
            boxes = torch.zeros(n, 4, dtype=torch.float32)
        return {
            "image_features": features,
            "image_feature_mask": torch.ones(n, dtype=torch.bool),
            "image_boxes": boxes,
        }


class BaseDataset(Dataset[dict[str, Any]]):
    """Shared behaviour of the readers: a name, a split, a visual source and a length.

    A reader registered in ``DATASETS`` provides two classmethods that read the config:
    ``processors_from_config(cfg, name) -> dict`` (vocabularies, answer space, ... built from
    the train split) and ``from_config(cfg, name, split, processors) -> dataset``.
    """

    name: str = "base"
    splits: Mapping[str, Any] = {}

    def __init__(self, *, data_dir: str | Path, split: str, visual: VisualSource) -> None:
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise DatasetError(f"{self.name}: data_dir {self.data_dir} is not a directory")
        self.split = split
        self.official_split = resolve_split(self.name, split, self.splits)
        self.visual = visual

    def __len__(self) -> int:  # pragma: no cover - every reader defines it
        raise NotImplementedError


def question_fields(vocab: Any, question: str, max_length: int) -> dict[str, Any]:
    """``question`` (str), ``question_ids`` int64 (max_length,), ``question_length`` int."""
    ids, length = vocab.encode(question, max_length=max_length)
    return {"question": question, "question_ids": ids, "question_length": max(1, length)}


def answer_fields(space: Any, answers: list[str]) -> dict[str, Any]:
    """``answers`` (the human answers) and, when there are some and a space is given,
    ``targets`` float32 (len(space),): the official soft scores."""
    out: dict[str, Any] = {"answers": answers}
    if answers and space is not None:
        out["targets"] = space.target(answers)
    return out


def majority(answers: Sequence[str]) -> str:
    """The most frequent answer (first seen wins a tie), as VQA's multiple_choice_answer."""
    counts: dict[str, int] = {}
    for a in answers:
        counts[a] = counts.get(a, 0) + 1
    return max(counts, key=lambda a: counts[a]) if counts else ""


class QuestionAnsweringDataset(BaseDataset):
    """The VQA-style readers (vqa2, textvqa, vizwiz): a question vocabulary, an optional
    answer space for soft-score targets, and the shared config edge. Subclasses read their
    files in ``__init__`` and implement ``build_processors``."""

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        visual: VisualSource,
        vocab: Any,
        answer_space: Any = None,
        max_question_length: int = 14,
    ) -> None:
        super().__init__(data_dir=data_dir, split=split, visual=visual)
        self.vocab = vocab
        self.answer_space = answer_space
        self.max_question_length = max_question_length

    @classmethod
    def from_config(cls, cfg: Any, name: str, split: str, processors: dict[str, Any]) -> Any:
        d = cfg.datasets[name]
        return cls(data_dir=d.data_dir, split=split, visual=VisualSource.from_config(cfg, name),
                   vocab=processors["vocab"], answer_space=processors.get("answer_space"),
                   max_question_length=d.max_question_length,
                   **cls.extra_processors(processors))

    @classmethod
    def extra_processors(cls, processors: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments taken from the processors beyond vocab and answer space."""
        return {}

    @classmethod
    def processors_from_config(cls, cfg: Any, name: str) -> dict[str, Any]:
        d = cfg.datasets[name]
        return cls.build_processors(d.data_dir, max_answers=d.answer_space.max_answers,
                                    min_answer_count=d.answer_space.min_count,
                                    split=d.train_split)

    @classmethod
    def build_processors(cls, data_dir: str | Path, *, max_answers: int | None,
                         min_answer_count: int, split: str) -> dict[str, Any]:
        """Question vocabulary and answer space built from ``split`` of ``data_dir``."""
        raise NotImplementedError

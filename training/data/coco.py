"""COCO Captions reader (official files, see ../shared/FORMATS.md).

Files under ``data_dir``::

    annotations/captions_<subtype>.json     subtype: train2014 | val2014
    <subtype>/<file_name>                   file names as listed in ``images``

Items: on ``train`` one per caption (the image repeats, as captioners train); on ``val`` one
per image. Sample fields: ``image_id`` int, ``caption`` (the target text), ``caption_ids``
int64 (L,) = ``<s> words </s> <pad>...``, ``caption_length`` (tokens incl. <s> and </s>),
``references`` (every caption of the image, for the metrics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.processors import Vocabulary
from training.data.base import (
    BaseDataset,
    DatasetError,
    VisualSource,
    field,
    read_json,
    resolve_split,
)
from training.registry import DATASETS


@DATASETS.register("coco")
class COCOCaptionsDataset(BaseDataset):
    name = "coco"
    splits = {"train": "train2014", "val": "val2014"}

    def __init__(
        self,
        *,
        data_dir: str | Path,
        split: str,
        visual: VisualSource,
        vocab: Vocabulary,
        max_caption_length: int = 20,
        per_caption: bool | None = None,
    ) -> None:
        super().__init__(data_dir=data_dir, split=split, visual=visual)
        self.vocab = vocab
        self.max_caption_length = max_caption_length
        self.per_caption = (split == "train") if per_caption is None else per_caption
        subtype = self.official_split
        self.annotations_file = self.data_dir / "annotations" / f"captions_{subtype}.json"
        self.images, self.captions = _read(self.annotations_file)
        image_dir = self.data_dir / subtype
        self.image_ids = sorted(self.images)
        items = [(image_dir / self.images[i], i) for i in self.image_ids]
        keys = self.visual.check(
            items, lambda k: f"{self.annotations_file}: image {self.image_ids[k]}"
        )
        self.key_of = dict(zip(self.image_ids, keys, strict=True))
        # Each item is (image_id, caption index within the image) or (image_id, 0).
        if self.per_caption:
            self.items = [(i, c) for i in self.image_ids for c in range(len(self.captions[i]))]
        else:
            self.items = [(i, 0) for i in self.image_ids]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_id, c = self.items[index]
        refs = self.captions[image_id]
        ids, length = self.vocab.encode(refs[c], max_length=self.max_caption_length,
                                        add_bos=True, add_eos=True)
        sample: dict[str, Any] = {
            "dataset": self.name,
            "image_id": image_id,
            "caption": refs[c],
            "caption_ids": ids,
            "caption_length": length,
            "references": list(refs),
        }
        sample.update(self.visual.load(self.key_of[image_id]))
        return sample

    @classmethod
    def from_config(cls, cfg: Any, name: str, split: str, processors: dict[str, Any]
                    ) -> COCOCaptionsDataset:
        d = cfg.datasets[name]
        return cls(data_dir=d.data_dir, split=split, visual=VisualSource.from_config(cfg, name),
                   vocab=processors["caption_vocab"], max_caption_length=d.max_caption_length)

    @classmethod
    def processors_from_config(cls, cfg: Any, name: str) -> dict[str, Any]:
        d = cfg.datasets[name]
        return cls.build_processors(d.data_dir, min_word_count=d.min_word_count,
                                    split=d.train_split)

    @classmethod
    def build_processors(
        cls, data_dir: str | Path, *, min_word_count: int = 1, split: str = "train"
    ) -> dict[str, Any]:
        """The caption vocabulary of ``split`` (words seen at least ``min_word_count`` times)."""
        subtype = resolve_split(cls.name, split, cls.splits)
        _, captions = _read(Path(data_dir) / "annotations" / f"captions_{subtype}.json")
        texts = [c for refs in captions.values() for c in refs]
        return {"caption_vocab": Vocabulary.build(texts, min_count=min_word_count)}


def _read(path: Path) -> tuple[dict[int, str], dict[int, list[str]]]:
    """(image_id -> file_name, image_id -> captions in annotation order)."""
    data = read_json(path)
    images: dict[int, str] = {}
    for i, im in enumerate(field(data, "images", list, str(path))):
        image_id = field(im, "id", int, f"{path}: images[{i}]")
        name = field(im, "file_name", str, f"{path}: image {image_id}")
        if "/" in name or "\\" in name or name.startswith("."):
            raise DatasetError(f"{path}: image {image_id}: field 'file_name' must be a plain "
                               "file name")
        images[image_id] = name
    captions: dict[int, list[str]] = {i: [] for i in images}
    for i, ann in enumerate(field(data, "annotations", list, str(path))):
        where = f"{path}: annotations[{i}]"
        image_id = field(ann, "image_id", int, where)
        caption = field(ann, "caption", str, where)
        if image_id not in captions:
            raise DatasetError(f"{where}: image_id {image_id} is not in 'images'")
        captions[image_id].append(caption)
    for image_id, refs in captions.items():
        if not refs:
            raise DatasetError(f"{path}: image {image_id} has no caption")
    return images, captions


def load_ground_truth(data_dir: str | Path, split: str) -> dict[int, list[str]]:
    """image_id -> reference captions of a split (``val2014`` or ``val``), reading no image."""
    official = {v: v for v in COCOCaptionsDataset.splits.values()}
    subtype = official.get(split) or resolve_split("coco", split, COCOCaptionsDataset.splits)
    _, captions = _read(Path(data_dir) / "annotations" / f"captions_{subtype}.json")
    return captions

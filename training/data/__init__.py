"""Dataset readers for the official formats, the feature store, batching and multi-task
sampling. Importing this package registers the built-in datasets (vqa2, textvqa, vizwiz,
coco, visdial) in ``training.registry.DATASETS``.

Config at the edge: ``build_processors`` and ``build_dataset`` read a resolved config
(``training.config.load_config``); the reader classes take plain keyword arguments.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from models.multitask import ANSWER_SPACE_PREFIX
from models.processors import Vocabulary
from training.data.base import BaseDataset, DatasetError, VisualSource
from training.data.coco import COCOCaptionsDataset
from training.data.collate import collate
from training.data.samplers import MultiTaskBatchSampler, ShardSampler
from training.data.textvqa import TextVQADataset
from training.data.visdial import VisDialDataset
from training.data.vizwiz import VizWizDataset
from training.data.vqa2 import VQA2Dataset
from training.registry import DATASETS


def build_processors(cfg: DictConfig, name: str) -> dict[str, Any]:
    """Processors of dataset ``name`` built from its ``train_split`` (vocabularies, answer
    space, OCR settings). The trainer saves them into the release."""
    reader: Any = DATASETS.get(name)
    return dict(reader.processors_from_config(cfg, name))


def build_multitask_processors(cfg: DictConfig, names: list[str]) -> dict[str, Any]:
    """One processor set for a model trained on several datasets (the ``multitask`` family).

    Keys: ``vocab`` (shared by every dataset's questions, and VisDial's captions and answers:
    the words of each dataset's own vocabulary, datasets taken in the order of ``names``, so
    a dataset's frequent words come first), ``answer_space_<name>`` for each VQA dataset,
    ``caption_vocab`` (COCO's, or an empty vocabulary when no captioning dataset is
    trained) and the other datasets' processors (``ocr`` from TextVQA) as they are.
    ``processors_for`` turns it back into what one dataset's reader expects.
    """
    merged: dict[str, Any] = {}
    words: list[str] = []
    seen: set[str] = set()
    for name in names:
        own = build_processors(cfg, name)
        vocab = own.pop("vocab", None)
        if vocab is not None:
            for w in vocab.words:
                if w not in seen:
                    seen.add(w)
                    words.append(w)
        space = own.pop("answer_space", None)
        if space is not None:
            merged[ANSWER_SPACE_PREFIX + name] = space
        merged.update(own)
    merged["vocab"] = Vocabulary(words)
    merged.setdefault("caption_vocab", Vocabulary([]))
    return merged


def processors_for(processors: dict[str, Any], name: str) -> dict[str, Any]:
    """The processors one dataset's reader takes: a multi-task set's ``answer_space_<name>``
    becomes ``answer_space``; a single-task set is returned as it is (copied)."""
    procs = dict(processors)
    space = procs.get(ANSWER_SPACE_PREFIX + name)
    if space is not None:
        procs["answer_space"] = space
    return procs


def build_dataset(cfg: DictConfig, name: str, split: str, processors: dict[str, Any]
                  ) -> BaseDataset:
    """Reader of dataset ``name`` for ``split`` with the given processors.

    Raw images are transformed at ``model.image_size``; ``datasets.<name>.features`` (a
    feature-store path) switches to precomputed features.
    """
    reader: Any = DATASETS.get(name)
    dataset: BaseDataset = reader.from_config(cfg, name, split, processors)
    return dataset


__all__ = [
    "ANSWER_SPACE_PREFIX",
    "BaseDataset",
    "COCOCaptionsDataset",
    "DatasetError",
    "MultiTaskBatchSampler",
    "ShardSampler",
    "TextVQADataset",
    "VQA2Dataset",
    "VisDialDataset",
    "VisualSource",
    "VizWizDataset",
    "build_dataset",
    "build_multitask_processors",
    "build_processors",
    "collate",
    "processors_for",
]

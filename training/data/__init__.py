"""Dataset readers for the official formats, the feature store, batching and multi-task
sampling. Importing this package registers the built-in datasets (vqa2, textvqa, vizwiz,
coco, visdial) in ``training.registry.DATASETS``.

Config at the edge: ``build_processors`` and ``build_dataset`` read a resolved config
(``training.config.load_config``); the reader classes take plain keyword arguments.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

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
    "build_processors",
    "collate",
]

"""The contract every model family follows (see ../shared/STYLE.md).

* Subclass ``BaseModel`` and register with ``@MODELS.register("<family>")``.
* The constructor takes keyword-only, JSON-serializable hyper-parameters (shared names across
  families: ``vocab_size``, ``num_answers``, ``image_dim``, ``hidden_dim``, ``embedding_dim``,
  ``dropout``, ...) and first calls ``super().__init__(hparams)`` with exactly those
  arguments, so a release can rebuild the model from ``config.json`` alone:
  ``type(model)(**model.hparams)`` is an identical, untrained twin.
* ``from_config(model_cfg, processors)`` is the only place that reads a config: it takes the
  ``model`` node of a resolved config and the processors built from the data (vocabulary
  sizes, answer space size, ...) and returns the model.
* ``config_defaults`` declares the family's config keys (layer 2 of ``training.config``).
* ``tasks`` names what the family serves: "vqa", "textvqa", "caption", "dialog".
* ``multi_dataset``: True for a family trained on several datasets at once; its
  ``from_config`` takes ``training.data.build_multitask_processors``' set (one shared
  ``vocab``, ``answer_space_<dataset>`` per VQA dataset, ...) and its ``forward`` routes on
  ``batch["dataset"]``. The others take one dataset's processors.
* ``forward(batch: dict) -> dict``: the batch is what ``training.data.collate`` produces; the
  output always holds the predictions of the family's task (documented per family, with
  shapes) and ``"loss"`` (a scalar tensor) when the batch has targets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import nn


class BaseModel(nn.Module):
    family: ClassVar[str] = ""
    tasks: ClassVar[tuple[str, ...]] = ()
    multi_dataset: ClassVar[bool] = False
    #: processor name -> the hyper-parameter its size must equal (checked when a release
    #: loads); ``answer_space_<dataset>`` is checked against ``answer_spaces[dataset]``.
    processor_sizes: ClassVar[dict[str, str]] = {
        "answer_space": "num_answers", "vocab": "vocab_size",
        "caption_vocab": "caption_vocab_size"}
    config_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        try:
            self.hparams: dict[str, Any] = json.loads(json.dumps(dict(hparams)))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{type(self).__name__}: hyper-parameters must be JSON-serializable "
                            f"({exc})") from None

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]
                    ) -> BaseModel:
        raise NotImplementedError

    def num_parameters(self, *, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters()
                   if p.requires_grad or not trainable_only)

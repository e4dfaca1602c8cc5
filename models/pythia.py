"""Pythia (Jiang et al. 2018, "Pythia v0.1"; MMF's ``pythia``): VQA by top-down attention.

Anatomy (shapes with B batch, L question tokens, N regions/cells, A answers)::

    question_ids (B, L) -> WordEmbedding (B, L, E) -> LSTM (B, L, H)
        -> SelfAttentionGlimpses (B, Q = num_glimpses * H)
    image (B, 3, S, S) -> ResNetGridEncoder ┐
    image_features (B, N, D) ───────────────┴> FeatureEncoder (B, N, D), mask (B, N)
    TopDownAttention(v, q) -> (B, image_glimpses * D)
    ProductFusion(v_att, q) -> (B, fusion_dim) -> TwoBranchClassifier -> logits (B, A)

``forward(batch)`` returns ``logits`` (B, A), ``scores`` = sigmoid(logits) (B, A),
``attention`` (B, image_glimpses, N) and, when the batch has ``targets`` (B, A) soft scores,
``loss``: ``logit_bce`` (BCE summed over answers, averaged over the batch).

The visual set is whatever the batch holds (``encode_image``): raw images through the
backbone (``backbone`` set), precomputed features of dimension ``image_dim``, or both
concatenated (regions + grid cells, the published recipe). GloVe vectors and backbone weights
are files read by ``from_config`` (keys ``glove_path``, ``backbone_weights``), not
hyper-parameters, so ``type(model)(**model.hparams)`` never needs them.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from models.base import BaseModel
from models.layers.attention import TopDownAttention
from models.layers.classifier import TwoBranchClassifier, logit_bce
from models.layers.fusion import ProductFusion
from models.layers.image import FeatureEncoder, ResNetGridEncoder, encode_image
from models.layers.text import SelfAttentionGlimpses, SequenceEncoder, WordEmbedding, length_mask
from models.registry import MODELS

__all__ = ["PUBLISHED_RECIPE", "SHAPES_RECIPE", "Pythia", "QuestionEncoder"]

#: Constructor kwargs of the published VQA v2 recipe (MMF ``pythia.yaml`` + Pythia v0.1):
#: GloVe 300-d over MMF's 75,505-word vocabulary, question LSTM 1024 with 2 self-attention
#: glimpses, attention and fusion at 5000 over 2048-d region features + ResNet-152 grid cells
#: (the grid backbone frozen, as MMF's precomputed ImageNet features were), MMF's logit
#: classifier (5000 + 300 branches), 3,129 answers.
PUBLISHED_RECIPE: dict[str, Any] = {
    "vocab_size": 75505,
    "num_answers": 3129,
    "embedding_dim": 300,
    "hidden_dim": 1024,
    "rnn": "lstm",
    "num_glimpses": 2,
    "image_dim": 2048,
    "backbone": "resnet152",
    "freeze_backbone": True,
    "image_glimpses": 1,
    "attention_dim": 5000,
    "fusion_dim": 5000,
    "classifier_dim": 5000,
    "classifier_text_dim": 300,
    "use_boxes": True,
    "dropout": 0.1,
}

#: A small configuration for ShapesWorld (CPU-trainable): resnet18 grid projected to 128-d,
#: or 128-d precomputed features. ``vocab_size``/``num_answers`` come from the processors.
SHAPES_RECIPE: dict[str, Any] = {
    "embedding_dim": 64,
    "hidden_dim": 128,
    "rnn": "lstm",
    "num_glimpses": 2,
    "image_dim": 128,
    "backbone": "resnet18",
    "freeze_backbone": False,
    "image_glimpses": 1,
    "attention_dim": 256,
    "fusion_dim": 256,
    "classifier_dim": 256,
    "classifier_text_dim": 64,
    "use_boxes": True,
    "dropout": 0.1,
}


class QuestionEncoder(nn.Module):
    """question_ids (B, L), question_length (B,) -> (tokens (B, L, H), mask (B, L),
    vector (B, num_glimpses * H)): embedding, LSTM/GRU, self-attention glimpses."""

    def __init__(self, *, vocab_size: int, embedding_dim: int, hidden_dim: int, rnn: str,
                 num_glimpses: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = WordEmbedding(vocab_size=vocab_size, embedding_dim=embedding_dim)
        self.rnn = SequenceEncoder(input_dim=embedding_dim, hidden_dim=hidden_dim, rnn=rnn)
        self.glimpses = SelfAttentionGlimpses(hidden_dim=hidden_dim, num_glimpses=num_glimpses,
                                              dropout=dropout)
        self.out_dim = self.glimpses.out_dim

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tokens, _ = self.rnn(self.embedding(ids), lengths)  # (B, L, H)
        mask = length_mask(lengths.to(ids.device), ids.size(1))  # (B, L)
        return tokens, mask, self.glimpses(tokens, mask)  # ..., (B, G * H)


def question_lengths(batch: Mapping[str, Any]) -> torch.Tensor:
    """``question_length`` (B,), or the count of non-pad ids when the batch lacks it."""
    length = batch.get("question_length")
    if length is None:
        length = (batch["question_ids"] != 0).sum(1)
    return torch.as_tensor(length)


def _plain(value: Any) -> Any:
    """An OmegaConf list/dict as plain Python (hyper-parameters must be JSON-serializable)."""
    if hasattr(value, "_metadata"):  # a DictConfig/ListConfig, without importing omegaconf
        from omegaconf import OmegaConf

        return OmegaConf.to_container(value, resolve=True)
    return value


def config_kwargs(cls: type, model_cfg: Mapping[str, Any], **derived: Any) -> dict[str, Any]:
    """Constructor kwargs of ``cls`` read from a ``model`` config node; ``derived`` (sizes
    from the processors) wins over the config. Keys the constructor does not take (``name``,
    ``image_size``, file paths) are skipped."""
    params = inspect.signature(cls).parameters
    kwargs = {k: _plain(model_cfg[k]) for k in model_cfg
              if k in params and model_cfg[k] is not None}
    kwargs.update(derived)
    return kwargs


def load_files_from_config(model: nn.Module, model_cfg: Mapping[str, Any],
                           processors: Mapping[str, Any]) -> None:
    """Read the files named by ``glove_path`` and ``backbone_weights`` into ``model``."""
    glove = model_cfg.get("glove_path")
    if glove:
        question = getattr(model, "question", model)  # BAN keeps its embedding at top level
        embedding: Any = question.get_submodule("embedding")
        embedding.load_glove(glove, processors["vocab"])
    weights = model_cfg.get("backbone_weights")
    if weights:
        grid: Any = getattr(model, "grid_encoder", None)
        if grid is None:
            raise ValueError("model.backbone_weights is set but model.backbone is null")
        grid.load_backbone_weights(weights)


class VisualMixin(nn.Module):
    """Shared by every family: the optional grid backbone and the feature encoder."""

    grid_encoder: ResNetGridEncoder | None
    feature_encoder: FeatureEncoder

    def build_visual(self, *, backbone: str | None, freeze_backbone: bool, image_dim: int,
                     use_boxes: bool) -> None:
        """Create ``grid_encoder`` (raw images, only with a ``backbone``) and
        ``feature_encoder`` (precomputed or grid features -> (B, N, image_dim))."""
        self.grid_encoder = (ResNetGridEncoder(backbone=backbone, freeze=freeze_backbone,
                                               out_dim=image_dim) if backbone else None)
        self.feature_encoder = FeatureEncoder(image_dim=image_dim, use_boxes=use_boxes)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the image backbone (for a lower learning rate); empty without one."""
        return iter(()) if self.grid_encoder is None else self.grid_encoder.backbone_parameters()


@MODELS.register("pythia")
class Pythia(BaseModel, VisualMixin):
    family = "pythia"
    tasks = ("vqa",)
    config_defaults: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in PUBLISHED_RECIPE.items() if k not in ("vocab_size", "num_answers")},
        # Raw-image mode (the trainer's default) needs a backbone; trainable unless the
        # config points backbone_weights at pretrained weights and sets freeze_backbone.
        "freeze_backbone": False,
        "glove_path": None,
        "backbone_weights": None,
    }

    def __init__(
        self,
        *,
        vocab_size: int,
        num_answers: int,
        embedding_dim: int = 300,
        hidden_dim: int = 1024,
        rnn: str = "lstm",
        num_glimpses: int = 2,
        image_dim: int = 2048,
        backbone: str | None = None,
        freeze_backbone: bool = False,
        image_glimpses: int = 1,
        attention_dim: int = 5000,
        fusion_dim: int = 5000,
        classifier_dim: int = 5000,
        classifier_text_dim: int = 300,
        use_boxes: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.question = QuestionEncoder(vocab_size=vocab_size, embedding_dim=embedding_dim,
                                        hidden_dim=hidden_dim, rnn=rnn,
                                        num_glimpses=num_glimpses)
        q_dim = self.question.out_dim
        self.build_visual(backbone=backbone, freeze_backbone=freeze_backbone,
                          image_dim=image_dim, use_boxes=use_boxes)
        self.image_attention = TopDownAttention(image_dim=image_dim, query_dim=q_dim,
                                                hidden_dim=attention_dim,
                                                num_glimpses=image_glimpses, dropout=dropout)
        self.fusion = ProductFusion(dims=[self.image_attention.out_dim, q_dim],
                                    hidden_dim=fusion_dim, dropout=dropout)
        self.classifier = TwoBranchClassifier(input_dim=fusion_dim, hidden_dim=classifier_dim,
                                              num_outputs=num_answers, dropout=dropout,
                                              text_hidden_dim=classifier_text_dim)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]
                    ) -> Pythia:
        model = cls(**config_kwargs(cls, model_cfg, vocab_size=len(processors["vocab"]),
                                    num_answers=len(processors["answer_space"])))
        load_files_from_config(model, model_cfg, processors)
        return model

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        ids = batch["question_ids"]  # (B, L)
        _, _, q = self.question(ids, question_lengths(batch))  # (B, Q)
        v, v_mask, _ = encode_image(batch, self.grid_encoder, self.feature_encoder)  # (B, N, D)
        v_att, weights = self.image_attention(v, q, v_mask)  # (B, G_img * D), (B, G_img, N)
        joint = self.fusion(v_att, q)  # (B, F)
        logits = self.classifier(joint)  # (B, A)
        out = {"logits": logits, "scores": torch.sigmoid(logits.float()), "attention": weights}
        if batch.get("targets") is not None:
            # TextVQA targets are (B, A + K) with the OCR-copy slots last: a model without
            # copy learns the answer-space part (a question answered only by copying is
            # then unanswerable for it, as it should be).
            out["loss"] = logit_bce(logits, batch["targets"][:, : logits.size(1)])
        return out

"""BUTD captioner (Anderson et al. 2018, "Bottom-Up and Top-Down Attention for Image
Captioning and Visual Question Answering"): image features -> two-LSTM attention decoder.

Anatomy (B batch, N regions/cells, D = image_dim, L caption tokens, V words)::

    image (B, 3, S, S) -> ResNetGridEncoder ┐
    image_features (B, N, D) ───────────────┴> FeatureEncoder (B, N, D), mask (B, N)
    AttentionLSTMDecoder(v, mask, caption_ids) -> logits (B, L - 1, V)

``forward(batch)``: with ``caption_ids`` (B, L) = ``<s> words </s> <pad>...`` it returns
``logits`` (B, L - 1, V) (teacher forcing) and ``loss``: cross-entropy over the non-pad
targets ``caption_ids[:, 1:]`` (``label_smoothing`` optional). Without captions it returns the
greedy caption: ``ids`` (B, T) and ``scores`` (B,) summed log-probabilities.

Self-critical training (``training.self_critical``): when the trainer has set
``model.self_critical`` (a ``SelfCritic``) and the model is in training mode, ``forward`` with
captions samples ``self_critical.samples`` captions per image instead of teacher forcing and
returns the critic's ``loss`` and ``reward`` (mean CIDEr-D of the samples).

``generate(batch, beam_size=1, max_length=20)`` -> per sample ``{"ids": [...], "score": float,
"beams": [(ids, score), ...]}``, ids without ``<s>`` and ending with ``</s>`` when the caption
finished (``Vocabulary.decode`` turns them into text). Greedy when ``beam_size == 1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol

import torch

from models.base import BaseModel
from models.layers.decoder import AttentionLSTMDecoder, sequence_loss, trim
from models.layers.image import encode_image
from models.pythia import VisualMixin, config_kwargs
from models.registry import MODELS

__all__ = ["BUTD", "PUBLISHED_RECIPE", "SHAPES_RECIPE", "SelfCritic"]

#: Constructor kwargs of the published COCO recipe (Anderson et al. 2018, section 3.2 and
#: appendix): 1000-d word embedding and LSTMs, 512-d attention, 36 x 2048-d Faster R-CNN
#: region features (precomputed, so no backbone), a ~10k-word vocabulary (words seen >= 5
#: times in Karpathy's train split). 57,992,125 parameters (~58.0M).
PUBLISHED_RECIPE: dict[str, Any] = {
    "vocab_size": 10010,
    "embedding_dim": 1000,
    "hidden_dim": 1000,
    "image_dim": 2048,
    "attention_dim": 512,
    "backbone": None,
    "freeze_backbone": False,
    "use_boxes": False,
    "dropout": 0.5,
    "label_smoothing": 0.0,
}

#: A small ShapesWorld configuration (CPU-trainable): resnet18 grid projected to 128-d, or
#: 128-d precomputed features. ``vocab_size`` comes from ``processors["caption_vocab"]``.
SHAPES_RECIPE: dict[str, Any] = {
    "embedding_dim": 64,
    "hidden_dim": 128,
    "image_dim": 128,
    "attention_dim": 128,
    "backbone": "resnet18",
    "freeze_backbone": False,
    "use_boxes": True,
    "dropout": 0.1,
    "label_smoothing": 0.0,
}


class SelfCritic(Protocol):
    """What ``training.self_critical.SelfCritical`` offers the model: how many captions to
    sample per image, how long, and the loss of the sampled ids (B * K, T) / per-token
    log-probabilities (B * K, T) for a batch (``{"loss", "reward"}``)."""

    samples: int
    max_length: int

    def loss(self, ids: torch.Tensor, log_probs: torch.Tensor, batch: Mapping[str, Any]
             ) -> dict[str, torch.Tensor]: ...


@MODELS.register("butd")
class BUTD(BaseModel, VisualMixin):
    family = "butd"
    tasks = ("caption",)
    processor_sizes: ClassVar[dict[str, str]] = {"caption_vocab": "vocab_size"}
    config_defaults: ClassVar[dict[str, Any]] = {
        **{k: v for k, v in PUBLISHED_RECIPE.items() if k != "vocab_size"},
        # Raw-image mode (the trainer's default) needs a backbone, as in pythia.
        "backbone": "resnet152",
        "glove_path": None,
        "backbone_weights": None,
    }

    def __init__(
        self,
        *,
        vocab_size: int,
        embedding_dim: int = 1000,
        hidden_dim: int = 1000,
        image_dim: int = 2048,
        attention_dim: int = 512,
        backbone: str | None = None,
        freeze_backbone: bool = False,
        use_boxes: bool = False,
        dropout: float = 0.5,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.label_smoothing = label_smoothing
        #: set by the trainer for self-critical training; not a module, never saved
        self.self_critical: SelfCritic | None = None
        self.build_visual(backbone=backbone, freeze_backbone=freeze_backbone,
                          image_dim=image_dim, use_boxes=use_boxes)
        self.decoder = AttentionLSTMDecoder(vocab_size=vocab_size, embedding_dim=embedding_dim,
                                            hidden_dim=hidden_dim, image_dim=image_dim,
                                            attention_dim=attention_dim, dropout=dropout)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]) -> BUTD:
        vocab = processors["caption_vocab"]
        model = cls(**config_kwargs(cls, model_cfg, vocab_size=len(vocab)))
        if model_cfg.get("glove_path"):
            model.decoder.embedding.load_glove(model_cfg["glove_path"], vocab)
        if model_cfg.get("backbone_weights"):
            if model.grid_encoder is None:
                raise ValueError("model.backbone_weights is set but model.backbone is null")
            model.grid_encoder.load_backbone_weights(model_cfg["backbone_weights"])
        return model

    def encode(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The visual set: features (B, N, D) float32 and mask (B, N) bool."""
        v, mask, _ = encode_image(batch, self.grid_encoder, self.feature_encoder)
        return v, mask

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        v, mask = self.encode(batch)  # (B, N, D), (B, N)
        captions = batch.get("caption_ids")
        if captions is None:
            ids, scores = self.decoder.greedy(v, mask, max_length=20)
            return {"ids": ids, "scores": scores}  # (B, T), (B,)
        critic = self.self_critical
        if critic is not None and self.training:
            ids, log_probs = self.decoder.sample(v, mask, critic.samples, critic.max_length)
            return critic.loss(ids, log_probs, batch)  # {"loss", "reward"}
        logits = self.decoder(v, mask, captions)  # (B, L-1, V)
        loss = sequence_loss(logits, captions[:, 1:], label_smoothing=self.label_smoothing)
        return {"logits": logits, "loss": loss}

    @torch.no_grad()
    def generate(self, batch: Mapping[str, Any], *, beam_size: int = 1, max_length: int = 20
                 ) -> list[dict[str, Any]]:
        v, mask = self.encode(batch)
        if beam_size == 1:
            ids, scores = self.decoder.greedy(v, mask, max_length)
            out = []
            for row, score in zip(ids.cpu().tolist(), scores.cpu().tolist()):
                seq = trim(row)
                out.append({"ids": seq, "score": score, "beams": [(seq, score)]})
            return out
        beams = self.decoder.beam_search(v, mask, beam_size, max_length)
        return [{"ids": bs[0][0], "score": bs[0][1], "beams": bs} for bs in beams]

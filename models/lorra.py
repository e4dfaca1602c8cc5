"""LoRRA (Singh et al. 2019, "Towards VQA Models That Can Read"): Pythia + reading + copying.

Anatomy (A answers, K OCR slots)::

    question -> QuestionEncoder -> q (B, Q)
    visual set (B, N, D) -> TopDownAttention(v, q) -> v_att (B, D)
    OCR fields -> OCRTokenEncoder -> ocr (B, K, O), ocr_mask (B, K)
        -> TopDownAttention(ocr, q) -> o_att (B, O)
    ProductFusion(v_att, o_att, q) -> joint (B, F)
    TwoBranchClassifier(joint) -> answer logits (B, A)
    copy logits (B, K) = <W joint, ocr_k> / sqrt(O), padded slots set to -1e4

``forward(batch)`` returns ``logits`` (B, A + K), ``scores`` = sigmoid (B, A + K),
``copy_attention`` (B, 1, K) and, with ``targets`` (B, A + K) (``OCRProcessor.copy_target``),
``loss`` = ``logit_bce``. A winning slot ``A + j`` answers with OCR token ``j``
(``decode_answers``). The masked-slot logit is a large finite negative (not -inf) so
BCE stays finite and fp16/bf16-safe; its sigmoid is 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from models.base import BaseModel
from models.layers.attention import TopDownAttention
from models.layers.classifier import TwoBranchClassifier, logit_bce
from models.layers.fusion import ProductFusion
from models.layers.image import encode_image
from models.layers.ocr import OCRTokenEncoder
from models.processors.ocr import CHARSET
from models.pythia import (
    QuestionEncoder,
    VisualMixin,
    config_kwargs,
    load_files_from_config,
    question_lengths,
)
from models.registry import MODELS

__all__ = ["MASKED_LOGIT", "LoRRA", "decode_answers"]

#: Logit of a padded OCR slot: sigmoid is 0 and BCE against a 0 target is 0, in any dtype.
MASKED_LOGIT = -1.0e4


@MODELS.register("lorra")
class LoRRA(BaseModel, VisualMixin):
    family = "lorra"
    tasks = ("textvqa",)
    config_defaults: ClassVar[dict[str, Any]] = {
        "embedding_dim": 300, "hidden_dim": 1024, "rnn": "lstm", "num_glimpses": 2,
        "image_dim": 2048, "backbone": "resnet152", "freeze_backbone": False, "image_glimpses": 1,
        "attention_dim": 5000, "fusion_dim": 5000, "classifier_dim": 5000,
        "classifier_text_dim": 300, "use_boxes": True, "dropout": 0.1,
        "ocr_embedding_dim": 300, "ocr_dim": 300, "ocr_visual": True,
        "glove_path": None, "backbone_weights": None,
    }  # fmt: skip

    def __init__(
        self,
        *,
        vocab_size: int,
        num_answers: int,
        hash_buckets: int = 4096,
        char_vocab_size: int = len(CHARSET) + 2,
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
        ocr_embedding_dim: int = 300,
        ocr_dim: int = 300,
        ocr_visual: bool = True,
    ) -> None:
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.num_answers = num_answers
        self.question = QuestionEncoder(vocab_size=vocab_size, embedding_dim=embedding_dim,
                                        hidden_dim=hidden_dim, rnn=rnn,
                                        num_glimpses=num_glimpses)
        q_dim = self.question.out_dim
        self.build_visual(backbone=backbone, freeze_backbone=freeze_backbone,
                          image_dim=image_dim, use_boxes=use_boxes)
        self.image_attention = TopDownAttention(image_dim=image_dim, query_dim=q_dim,
                                                hidden_dim=attention_dim,
                                                num_glimpses=image_glimpses, dropout=dropout)
        self.ocr_encoder = OCRTokenEncoder(hash_buckets=hash_buckets,
                                           char_vocab_size=char_vocab_size,
                                           embedding_dim=ocr_embedding_dim, out_dim=ocr_dim,
                                           image_dim=image_dim if ocr_visual else None)
        self.ocr_attention = TopDownAttention(image_dim=ocr_dim, query_dim=q_dim,
                                              hidden_dim=attention_dim, num_glimpses=1,
                                              dropout=dropout)
        self.fusion = ProductFusion(
            dims=[self.image_attention.out_dim, self.ocr_attention.out_dim, q_dim],
            hidden_dim=fusion_dim, dropout=dropout)
        self.classifier = TwoBranchClassifier(input_dim=fusion_dim, hidden_dim=classifier_dim,
                                              num_outputs=num_answers, dropout=dropout,
                                              text_hidden_dim=classifier_text_dim)
        self.copy_query = nn.Linear(fusion_dim, ocr_dim)
        self.copy_scale = 1.0 / math.sqrt(ocr_dim)

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]) -> LoRRA:
        ocr = processors["ocr"]
        model = cls(**config_kwargs(cls, model_cfg, vocab_size=len(processors["vocab"]),
                                    num_answers=len(processors["answer_space"]),
                                    hash_buckets=ocr.hash_buckets,
                                    char_vocab_size=len(CHARSET) + 2))
        load_files_from_config(model, model_cfg, processors)
        return model

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        _, _, q = self.question(batch["question_ids"], question_lengths(batch))  # (B, Q)
        v, v_mask, v_boxes = encode_image(batch, self.grid_encoder, self.feature_encoder)
        v_att, _ = self.image_attention(v, q, v_mask)  # (B, G_img * D)
        ocr, ocr_mask = self.ocr_encoder(
            batch["ocr_hash_ids"], batch["ocr_char_ids"], batch["ocr_boxes"], batch["ocr_mask"],
            v, v_boxes, v_mask)  # (B, K, O), (B, K)
        o_att, o_weights = self.ocr_attention(ocr, q, ocr_mask)  # (B, O), (B, 1, K)
        joint = self.fusion(v_att, o_att, q)  # (B, F)
        answer_logits = self.classifier(joint)  # (B, A)
        copy = torch.einsum("bo,bko->bk", self.copy_query(joint), ocr.to(joint.dtype))
        copy = (copy * self.copy_scale).masked_fill(~ocr_mask, MASKED_LOGIT)  # (B, K)
        logits = torch.cat([answer_logits, copy.to(answer_logits.dtype)], dim=1)  # (B, A + K)
        out = {"logits": logits, "scores": torch.sigmoid(logits.float()),
               "copy_attention": o_weights}
        targets = batch.get("targets")
        if targets is not None:
            if targets.shape != logits.shape:
                raise ValueError(f"LoRRA: targets {tuple(targets.shape)} must be (B, A + K) = "
                                 f"{tuple(logits.shape)} (OCRProcessor.copy_target)")
            out["loss"] = logit_bce(logits, targets)
        return out


def decode_answers(
    logits: torch.Tensor,
    answers: Sequence[str],
    ocr_tokens: Sequence[Sequence[str]],
    top_k: int = 1,
) -> list[list[tuple[str, float, bool]]]:
    """Per sample, the ``top_k`` best ``(answer_text, score, copied)`` of (B, A + K) logits.

    Slot ``j < A`` is ``answers[j]``; slot ``j >= A`` copies ``ocr_tokens[b][j - A]``
    (``copied=True``). Slots past a sample's real OCR tokens are never returned. ``score`` is
    the sigmoid probability.
    """
    A = len(answers)
    # Rank by logits, report sigmoid probabilities: saturated sigmoids tie at 1.0 in float32,
    # the logits still order them.
    ranked = logits.detach().float().cpu()  # (B, A + K)
    out: list[list[tuple[str, float, bool]]] = []
    for b in range(ranked.size(0)):
        row = ranked[b].clone()
        n_ocr = min(len(ocr_tokens[b]), row.numel() - A)
        row[A + n_ocr:] = float("-inf")  # padded slots: never returned
        k = min(top_k, int(torch.isfinite(row).sum()))  # nor slots a caller masked to -inf
        values, idx = row.topk(k)
        picks: list[tuple[str, float, bool]] = []
        for s, j in zip(torch.sigmoid(values).tolist(), idx.tolist()):
            if j < A:
                picks.append((answers[j], s, False))
            else:
                picks.append((ocr_tokens[b][j - A], s, True))
        out.append(picks)
    return out

"""BAN: Bilinear Attention Networks (Kim, Jun & Zhang, NeurIPS 2018) for VQA.

Anatomy (L tokens, N regions, G glimpses, R = hidden_dim * rank)::

    question -> WordEmbedding -> GRU -> q (B, L, H)
    visual set -> v (B, N, D), v_mask (B, N)
    bilinear attention maps: A = softmax_{N x L}( (relu(U v) ∘ p_g) relu(V q)^T )
        -> (B, G, N, L), masked on padded regions x padded tokens
    for g in 1..G:                                        (bilinear pooling per glimpse)
        f_g = sum_k of rank-chunks of  relu(U_g v)^T A_g relu(V_g q)        # (B, H)
        q   = q + P_g(f_g)  broadcast over tokens                          # (B, L, H)
    logits = MLP(sum over real tokens of q)                                 # (B, A)

Low-rank bilinear maps as in the paper (rank ``rank``, pooled by summing the rank chunks, i.e.
the paper's AvgPool scaled by k). Not included: the counting module of the paper's best
VQA v2 number (70.04 used it).

``forward(batch)`` returns ``logits`` (B, A), ``scores`` = sigmoid (B, A), ``attention``
(B, G, N, L) and, with ``targets`` (B, A), ``loss`` = ``logit_bce``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn

from models.base import BaseModel
from models.layers.attention import masked_softmax
from models.layers.classifier import logit_bce
from models.layers.fusion import NonLinear, wn_linear
from models.layers.image import encode_image
from models.layers.text import SequenceEncoder, WordEmbedding, length_mask
from models.pythia import VisualMixin, config_kwargs, load_files_from_config, question_lengths
from models.registry import MODELS

__all__ = ["BAN", "BilinearAttentionMap"]


class BilinearAttentionMap(nn.Module):
    """(v (B, N, D), q (B, L, H), v_mask (B, N), q_mask (B, L)) -> (B, G, N, L) attention,
    each glimpse softmaxed jointly over the unmasked region x token pairs."""

    def __init__(self, *, image_dim: int, query_dim: int, hidden_dim: int, num_glimpses: int,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.v_net = NonLinear(image_dim, hidden_dim)
        self.q_net = NonLinear(query_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.h_mat = nn.Parameter(torch.randn(num_glimpses, hidden_dim) / hidden_dim**0.5)

    def forward(self, v: torch.Tensor, q: torch.Tensor, v_mask: torch.Tensor,
                q_mask: torch.Tensor) -> torch.Tensor:
        B, N, _ = v.shape
        L = q.size(1)
        va = self.dropout(self.v_net(v))  # (B, N, R)
        qa = self.q_net(q)  # (B, L, R)
        # (B, G, N, L); the paper's per-glimpse bias is dropped: a softmax over all N x L
        # pairs of one glimpse is invariant to it.
        logits = torch.einsum("bnr,gr,blr->bgnl", va, self.h_mat.to(va.dtype), qa)
        pair_mask = (v_mask[:, :, None] & q_mask[:, None, :]).reshape(B, 1, N * L)
        att = masked_softmax(logits.reshape(B, -1, N * L), pair_mask, dim=-1)
        return att.reshape(B, -1, N, L)


@MODELS.register("ban")
class BAN(BaseModel, VisualMixin):
    family = "ban"
    tasks = ("vqa",)
    config_defaults: ClassVar[dict[str, Any]] = {
        "embedding_dim": 300, "hidden_dim": 1280, "rnn": "gru", "num_glimpses": 8,
        "image_dim": 2048, "backbone": "resnet152", "freeze_backbone": False, "rank": 3,
        "classifier_dim": 2560, "use_boxes": True, "dropout": 0.2,
        "glove_path": None, "backbone_weights": None,
    }  # fmt: skip

    def __init__(
        self,
        *,
        vocab_size: int,
        num_answers: int,
        embedding_dim: int = 300,
        hidden_dim: int = 1280,
        rnn: str = "gru",
        num_glimpses: int = 8,
        image_dim: int = 2048,
        backbone: str | None = None,
        freeze_backbone: bool = False,
        rank: int = 3,
        classifier_dim: int = 2560,
        use_boxes: bool = True,
        dropout: float = 0.2,
    ) -> None:
        super().__init__({k: v for k, v in locals().items() if k not in ("self", "__class__")})
        self.hidden_dim = hidden_dim
        self.rank = rank
        self.embedding = WordEmbedding(vocab_size=vocab_size, embedding_dim=embedding_dim)
        self.rnn = SequenceEncoder(input_dim=embedding_dim, hidden_dim=hidden_dim, rnn=rnn)
        self.build_visual(backbone=backbone, freeze_backbone=freeze_backbone,
                          image_dim=image_dim, use_boxes=use_boxes)
        self.attention = BilinearAttentionMap(image_dim=image_dim, query_dim=hidden_dim,
                                              hidden_dim=hidden_dim * rank,
                                              num_glimpses=num_glimpses, dropout=dropout)
        R = hidden_dim * rank
        self.pool_v = nn.ModuleList(NonLinear(image_dim, R) for _ in range(num_glimpses))
        self.pool_q = nn.ModuleList(NonLinear(hidden_dim, R) for _ in range(num_glimpses))
        self.q_proj = nn.ModuleList(wn_linear(hidden_dim, hidden_dim)
                                    for _ in range(num_glimpses))
        self.classifier = nn.Sequential(
            wn_linear(hidden_dim, classifier_dim), nn.ReLU(), nn.Dropout(dropout),
            wn_linear(classifier_dim, num_answers),
        )

    @classmethod
    def from_config(cls, model_cfg: Mapping[str, Any], processors: Mapping[str, Any]) -> BAN:
        model = cls(**config_kwargs(cls, model_cfg, vocab_size=len(processors["vocab"]),
                                    num_answers=len(processors["answer_space"])))
        load_files_from_config(model, model_cfg, processors)
        return model

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        ids = batch["question_ids"]  # (B, L)
        lengths = question_lengths(batch)
        q, _ = self.rnn(self.embedding(ids), lengths)  # (B, L, H)
        q_mask = length_mask(lengths.to(ids.device), ids.size(1))  # (B, L)
        v, v_mask, _ = encode_image(batch, self.grid_encoder, self.feature_encoder)  # (B, N, D)
        att = self.attention(v, q, v_mask, q_mask)  # (B, G, N, L)
        B = ids.size(0)
        for g in range(att.size(1)):
            vp = self.pool_v[g](v)  # (B, N, R)
            qp = self.pool_q[g](q)  # (B, L, R)
            f = torch.einsum("bnr,bnl,blr->br", vp, att[:, g].to(vp.dtype), qp)  # (B, R)
            f = f.reshape(B, self.hidden_dim, self.rank).sum(-1)  # (B, H)
            q = q + self.q_proj[g](f).unsqueeze(1)  # (B, L, H)
        pooled = (q * q_mask.unsqueeze(-1).to(q.dtype)).sum(1)  # (B, H)
        logits = self.classifier(pooled)  # (B, A)
        out = {"logits": logits, "scores": torch.sigmoid(logits.float()), "attention": att}
        if batch.get("targets") is not None:
            # TextVQA targets are (B, A + K) with the OCR-copy slots last: a model without
            # copy learns the answer-space part (a question answered only by copying is
            # then unanswerable for it, as it should be).
            out["loss"] = logit_bce(logits, batch["targets"][:, : logits.size(1)])
        return out

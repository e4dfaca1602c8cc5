"""Attention over a masked set: ``masked_softmax`` and Pythia's top-down image attention."""

from __future__ import annotations

import torch
from torch import nn

from models.layers.fusion import NonLinear

__all__ = ["TopDownAttention", "masked_softmax"]


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor | None, dim: int = -1) -> torch.Tensor:
    """Softmax of ``logits`` over ``dim`` where ``mask`` (bool, broadcastable) is true.

    Masked positions get exactly 0; a slice with no true position gives all zeros (never NaN).
    """
    if mask is None:
        return torch.softmax(logits, dim=dim)
    mask = mask.to(torch.bool)
    filled = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    probs = torch.softmax(filled, dim=dim) * mask.to(logits.dtype)
    # Re-normalize: exact zeros on masked positions; an all-masked slice sums to 0 -> stays 0.
    return probs / probs.sum(dim=dim, keepdim=True).clamp_min(torch.finfo(logits.dtype).tiny)


class TopDownAttention(nn.Module):
    """Question-guided attention over regions (Anderson et al. 2018, as in Pythia/MMF).

    ``v`` (B, N, image_dim) and ``q`` (B, query_dim) are projected to ``hidden_dim``
    (weight-normed linear + ReLU), combined (``combine="product"``: element-wise, Pythia's
    ``non_linear_element_multiply``; ``"concat"``: concatenation then another projection),
    mapped to ``num_glimpses`` logits per region, softmaxed over the unmasked regions and used to
    average ``v``.

    ``forward(v, q, mask)`` -> (attended (B, num_glimpses * image_dim),
    weights (B, num_glimpses, N)).
    """

    def __init__(
        self,
        *,
        image_dim: int,
        query_dim: int,
        hidden_dim: int,
        num_glimpses: int = 1,
        dropout: float = 0.0,
        combine: str = "product",
    ) -> None:
        super().__init__()
        if combine not in ("product", "concat"):
            raise ValueError(f"TopDownAttention: combine must be 'product' or 'concat', "
                             f"got {combine!r}")
        self.combine = combine
        self.num_glimpses = num_glimpses
        self.out_dim = num_glimpses * image_dim
        self.image_proj = NonLinear(image_dim, hidden_dim)
        self.query_proj = NonLinear(query_dim, hidden_dim)
        self.joint = NonLinear(2 * hidden_dim, hidden_dim) if combine == "concat" else None
        self.dropout = nn.Dropout(dropout)
        self.logits = nn.Linear(hidden_dim, num_glimpses)

    def forward(
        self, v: torch.Tensor, q: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, _ = v.shape
        vp = self.image_proj(v)  # (B, N, H)
        qp = self.query_proj(q).unsqueeze(1)  # (B, 1, H)
        if self.joint is not None:
            joint = self.joint(torch.cat([vp, qp.expand(-1, N, -1)], dim=-1))  # (B, N, H)
        else:
            joint = vp * qp  # (B, N, H)
        logits = self.logits(self.dropout(joint)).transpose(1, 2)  # (B, G, N)
        weights = masked_softmax(logits, None if mask is None else mask.unsqueeze(1), dim=-1)
        attended = torch.bmm(weights.to(v.dtype), v)  # (B, G, D)
        return attended.reshape(B, -1), weights

"""Answer classifier and the soft-score loss.

``TwoBranchClassifier`` is MMF's ``logit`` classifier (the one Pythia uses): two non-linear
branches read the same joint vector, one wide (``hidden_dim``, MMF's ``img_hidden_dim``, 5000)
and one narrow (``text_hidden_dim``, MMF's 300); each branch has its own linear output layer
and the two logit vectors are summed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.fusion import NonLinear, wn_linear

__all__ = ["TwoBranchClassifier", "logit_bce"]


class TwoBranchClassifier(nn.Module):
    """(B, input_dim) -> logits (B, num_outputs) = W_a(NL_a(x)) + W_b(NL_b(x))."""

    def __init__(
        self,
        *,
        input_dim: int,
        hidden_dim: int,
        num_outputs: int,
        dropout: float = 0.0,
        text_hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        text_hidden_dim = text_hidden_dim or hidden_dim
        self.dropout = nn.Dropout(dropout)
        self.branch_a = NonLinear(input_dim, hidden_dim)
        self.branch_b = NonLinear(input_dim, text_hidden_dim)
        self.out_a = wn_linear(hidden_dim, num_outputs)
        self.out_b = wn_linear(text_hidden_dim, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        return self.out_a(self.branch_a(x)) + self.out_b(self.branch_b(x))  # (B, num_outputs)


def logit_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """MMF's ``logit_bce``: BCE-with-logits against soft scores (B, A), averaged over all B*A
    entries and multiplied by A — i.e. summed over answers and averaged over the batch, so
    the loss scale does not shrink with the answer-space size. Computed in float32."""
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets.float(), reduction="mean")
    return loss * targets.size(1)

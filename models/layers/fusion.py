"""Multimodal fusion: combine several vectors into one joint vector.

``ProductFusion`` is Pythia/MMF's ``non_linear_element_multiply``: each input goes through its
own weight-normalized linear layer + ReLU to ``hidden_dim``, and the projections are multiplied
element-wise. ``ConcatFusion`` concatenates the inputs and applies one such layer.

``NonLinear`` (weight-normed linear + ReLU, MMF's ``ReLUWithWeightNormFC``) is the building
block shared with ``layers.attention`` and ``layers.classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

__all__ = ["ConcatFusion", "NonLinear", "ProductFusion", "wn_linear"]


def wn_linear(in_dim: int, out_dim: int) -> nn.Module:
    """A linear layer with weight normalization over the whole matrix (``dim=None``, as MMF)."""
    return weight_norm(nn.Linear(in_dim, out_dim), dim=None)  # type: ignore[arg-type]


class NonLinear(nn.Module):
    """``ReLU(WN-Linear(x))``: (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear = wn_linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))


class ProductFusion(nn.Module):
    """Element-wise product of per-input non-linear projections.

    ``forward(*xs)`` with ``xs[i]`` of shape (B, dims[i]) (or (B, N, dims[i]); all inputs must
    broadcast against each other after projection) -> (B, hidden_dim).
    """

    def __init__(self, *, dims: Sequence[int], hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        if len(dims) < 2:
            raise ValueError("ProductFusion: needs at least two inputs")
        self.dims = [int(d) for d in dims]
        self.out_dim = hidden_dim
        self.projections = nn.ModuleList(NonLinear(d, hidden_dim) for d in self.dims)
        self.dropout = nn.Dropout(dropout)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.projections):
            raise ValueError(f"ProductFusion: expected {len(self.projections)} inputs, "
                             f"got {len(xs)}")
        out = self.projections[0](xs[0])
        for proj, x in zip(self.projections[1:], xs[1:]):
            out = out * proj(x)  # (B, hidden_dim)
        return self.dropout(out)


class ConcatFusion(nn.Module):
    """``ReLU(WN-Linear(cat(xs)))``: inputs (B, dims[i]) -> (B, hidden_dim)."""

    def __init__(self, *, dims: Sequence[int], hidden_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dims = [int(d) for d in dims]
        self.out_dim = hidden_dim
        self.projection = NonLinear(sum(self.dims), hidden_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if len(xs) != len(self.dims):
            raise ValueError(f"ConcatFusion: expected {len(self.dims)} inputs, got {len(xs)}")
        return self.dropout(self.projection(torch.cat(xs, dim=-1)))  # (B, hidden_dim)

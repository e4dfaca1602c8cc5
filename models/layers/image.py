"""Visual inputs: raw images through a ResNet grid, or precomputed region/grid features.

Both paths end as a set of N vectors with a mask and relative boxes, so attention layers do
not care where features came from. ``encode_image(batch, grid_encoder, feature_encoder)``
reads the batch fields of ``training.data.base`` (``image`` or ``image_features`` +
``image_feature_mask`` + ``image_boxes``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.layers.backbones import RESNET_CHANNELS, resnet_trunk

__all__ = ["FeatureEncoder", "ResNetGridEncoder", "box_features", "encode_image", "grid_boxes"]


def grid_boxes(h: int, w: int, *, device: torch.device | None = None) -> torch.Tensor:
    """Relative x1, y1, x2, y2 of the cells of an h x w grid, row-major: (h * w, 4)."""
    ys = torch.arange(h, device=device, dtype=torch.float32)
    xs = torch.arange(w, device=device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    boxes = torch.stack([gx / w, gy / h, (gx + 1) / w, (gy + 1) / h], dim=-1)
    return boxes.reshape(h * w, 4)


def box_features(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) relative x1, y1, x2, y2 -> (..., 5): the corners and the relative area."""
    boxes = boxes.float()
    w = (boxes[..., 2] - boxes[..., 0]).clamp_min(0)
    h = (boxes[..., 3] - boxes[..., 1]).clamp_min(0)
    area = w * h
    return torch.cat([boxes, area.unsqueeze(-1)], dim=-1)


class ResNetGridEncoder(nn.Module):
    """(B, 3, S, S) normalized images -> features (B, h*w, C), mask (B, h*w) all true,
    boxes (B, h*w, 4) relative grid cells; h = w = ceil(S / 32).

    C is the trunk's channels, or ``out_dim`` through a linear projection. ``freeze`` turns off
    the trunk's gradients and keeps its BatchNorm in eval mode (running stats untouched) even
    when the model trains. ``backbone_parameters()`` lists the trunk's parameters so the
    trainer can give them a lower learning rate.
    """

    def __init__(
        self,
        *,
        backbone: str = "resnet152",
        weights_path: str | Path | None = None,
        freeze: bool = False,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.trunk = resnet_trunk(backbone, weights_path=weights_path)
        channels = RESNET_CHANNELS[backbone]
        self.proj: nn.Module = (nn.Linear(channels, out_dim)
                                if out_dim is not None and out_dim != channels else nn.Identity())
        self.out_dim = out_dim if out_dim is not None else channels
        self.freeze = freeze
        if freeze:
            for p in self.trunk.parameters():
                p.requires_grad_(False)

    def load_backbone_weights(self, weights_path: str | Path) -> None:
        """Load a local torchvision state dict into the trunk (same checks as resnet_trunk)."""
        loaded = resnet_trunk(self.backbone, weights_path=weights_path)
        self.trunk.load_state_dict(loaded.state_dict())

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.trunk.parameters()

    def train(self, mode: bool = True) -> ResNetGridEncoder:
        super().train(mode)
        if self.freeze:
            self.trunk.eval()
        return self

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fmap = self.trunk(image)  # (B, C, h, w)
        B, _, h, w = fmap.shape
        feats = self.proj(fmap.flatten(2).transpose(1, 2))  # (B, h*w, D)
        mask = torch.ones(B, h * w, dtype=torch.bool, device=image.device)
        boxes = grid_boxes(h, w, device=image.device).unsqueeze(0).expand(B, -1, -1)
        return feats, mask, boxes


class FeatureEncoder(nn.Module):
    """Precomputed features (B, N, image_dim), any float dtype -> (B, N, out_dim) float32.

    Optional linear projection to ``hidden_dim`` (out_dim = hidden_dim, else image_dim) and,
    with ``use_boxes``, an added position embedding of (x1, y1, x2, y2, area). Grid features
    from a feature store carry zero boxes; their position embedding is then the bias alone.
    ``forward(features, mask=None, boxes=None)`` -> (features, mask (B, N) bool).
    """

    def __init__(self, *, image_dim: int, hidden_dim: int | None = None,
                 use_boxes: bool = True) -> None:
        super().__init__()
        self.image_dim = image_dim
        self.out_dim = hidden_dim if hidden_dim is not None else image_dim
        self.proj: nn.Module = (nn.Linear(image_dim, hidden_dim) if hidden_dim is not None
                                else nn.Identity())
        self.box_embed = nn.Linear(5, self.out_dim) if use_boxes else None

    def forward(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, N, dim = features.shape
        if dim != self.image_dim:
            raise ValueError(f"FeatureEncoder: features have dimension {dim}, the model expects "
                             f"image_dim={self.image_dim}")
        x = self.proj(features.float())  # (B, N, out_dim)
        if self.box_embed is not None and boxes is not None:
            x = x + self.box_embed(box_features(boxes))
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=features.device)
        return x, mask.to(torch.bool)


def encode_image(
    batch: Mapping[str, Any],
    grid_encoder: ResNetGridEncoder | None,
    feature_encoder: FeatureEncoder,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The visual set of a batch: (features (B, N, D), mask (B, N), boxes (B, N, 4)).

    ``image`` goes through ``grid_encoder`` (its output dimension must be the feature encoder's
    ``image_dim``); ``image_features`` (+ ``image_feature_mask``, ``image_boxes``) is used
    as is. When a batch carries both, the two sets are concatenated along N (regions + grid
    cells, Pythia's recipe). Either way the set then goes through ``feature_encoder``.
    """
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    if "image_features" in batch:
        feats = batch["image_features"]
        B, N, _ = feats.shape
        mask = batch.get("image_feature_mask")
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=feats.device)
        boxes = batch.get("image_boxes")
        if boxes is None:
            boxes = torch.zeros(B, N, 4, device=feats.device)
        parts.append((feats.float(), mask.to(torch.bool), boxes.float()))
    if "image" in batch:
        if grid_encoder is None:
            raise ValueError("the batch has raw 'image' but this model has no backbone; set "
                             "backbone (e.g. 'resnet152') or use a feature store "
                             "('image_features')")
        parts.append(grid_encoder(batch["image"]))
    if not parts:
        raise KeyError("the batch has no visual input: expected 'image' (B, 3, S, S) or "
                       "'image_features' (B, N, D); batch keys: " + ", ".join(sorted(batch)))
    if len(parts) == 1:
        feats, mask, boxes = parts[0]
    else:
        feats = torch.cat([p[0].float() for p in parts], dim=1)
        mask = torch.cat([p[1] for p in parts], dim=1)
        boxes = torch.cat([p[2].float() for p in parts], dim=1)
    feats, mask = feature_encoder(feats, mask, boxes)
    return feats, mask, boxes

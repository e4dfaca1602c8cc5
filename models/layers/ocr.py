"""OCR token embeddings for LoRRA-style reading and copying.

An OCR token is mostly outside any fixed vocabulary, so it is embedded from what
``models.processors.OCRProcessor`` made of it: hashed character n-grams (``ocr_hash_ids``,
fastText-like: mean of bucket embeddings, pad id 0 ignored), its characters (``ocr_char_ids``:
a small char CNN, max-pooled over the real characters), its box (``ocr_boxes``: x1, y1, x2, y2,
area) and, when ``image_dim`` is set, the mean of the visual features whose boxes overlap it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.image import box_features

__all__ = ["OCRTokenEncoder", "box_overlap"]


def box_overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Intersection areas of relative boxes: a (B, K, 4), b (B, N, 4) -> (B, K, N)."""
    x1 = torch.maximum(a[..., :, None, 0], b[..., None, :, 0])
    y1 = torch.maximum(a[..., :, None, 1], b[..., None, :, 1])
    x2 = torch.minimum(a[..., :, None, 2], b[..., None, :, 2])
    y2 = torch.minimum(a[..., :, None, 3], b[..., None, :, 3])
    return (x2 - x1).clamp_min(0) * (y2 - y1).clamp_min(0)


class OCRTokenEncoder(nn.Module):
    """OCR fields -> token embeddings (B, K, out_dim) and mask (B, K).

    ``forward(hash_ids (B, K, G), char_ids (B, K, C), boxes (B, K, 4), mask (B, K),
    image_features (B, N, image_dim) = None, image_boxes (B, N, 4) = None,
    image_mask (B, N) = None)``. Padded tokens (mask false) embed to zeros.
    """

    def __init__(
        self,
        *,
        hash_buckets: int,
        char_vocab_size: int,
        embedding_dim: int,
        out_dim: int,
        image_dim: int | None = None,
        char_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.out_dim = out_dim
        self.hash_embed = nn.Embedding(hash_buckets, embedding_dim, padding_idx=0)
        self.char_embed = nn.Embedding(char_vocab_size, embedding_dim, padding_idx=0)
        self.char_conv = nn.Conv1d(embedding_dim, embedding_dim, char_kernel,
                                   padding=char_kernel // 2)
        self.token_proj = nn.Linear(2 * embedding_dim, out_dim)
        self.box_embed = nn.Linear(5, out_dim)
        self.image_proj = nn.Linear(image_dim, out_dim) if image_dim is not None else None
        self.norm = nn.LayerNorm(out_dim)

    def forward(
        self,
        hash_ids: torch.Tensor,
        char_ids: torch.Tensor,
        boxes: torch.Tensor,
        mask: torch.Tensor,
        image_features: torch.Tensor | None = None,
        image_boxes: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, K, C = char_ids.shape  # hash_ids: (B, K, G)
        # Hashed n-grams: mean over the non-pad buckets.
        hmask = (hash_ids != 0).unsqueeze(-1).float()  # (B, K, G, 1)
        hashed = (self.hash_embed(hash_ids) * hmask).sum(2) / hmask.sum(2).clamp_min(1)  # (B,K,E)
        # Characters: conv over the word, max over the real characters.
        cmask = (char_ids != 0).reshape(B * K, 1, C)
        chars = self.char_embed(char_ids).reshape(B * K, C, -1).transpose(1, 2)  # (BK, E, C)
        chars = F.relu(self.char_conv(chars)).masked_fill(~cmask, 0.0)
        chars = chars.amax(dim=2).reshape(B, K, -1)  # (B, K, E); ReLU >= 0 so 0-fill is safe
        x = self.token_proj(torch.cat([hashed, chars], dim=-1))  # (B, K, out_dim)
        x = x + self.box_embed(box_features(boxes))
        if self.image_proj is not None and image_features is not None and image_boxes is not None:
            overlap = (box_overlap(boxes.float(), image_boxes.float()) > 0).float()  # (B, K, N)
            if image_mask is not None:
                overlap = overlap * image_mask.unsqueeze(1).float()
            under = torch.bmm(overlap, image_features.float())  # (B, K, image_dim)
            under = under / overlap.sum(-1, keepdim=True).clamp_min(1)
            x = x + self.image_proj(under)
        mask = mask.to(torch.bool)
        return self.norm(x) * mask.unsqueeze(-1), mask

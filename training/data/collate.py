"""Batching samples of one dataset into one dict.

* tensors of equal shape are stacked: (B, ...);
* tensors whose first dimension differs (region features with different box counts) are
  zero-padded along dim 0 to the longest, then stacked — the matching ``*_mask`` tensors are
  padded with False, so padding is never attended to;
* ints, floats and bools become 1-D tensors; ``dataset`` becomes one string when all samples
  agree; everything else (strings, lists of answers or OCR tokens) stays a Python list of
  length B.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import get_worker_info


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        raise ValueError("collate: empty batch")
    keys = samples[0].keys()
    for s in samples[1:]:
        if s.keys() != keys:
            raise ValueError(f"collate: samples disagree on fields: {sorted(keys ^ s.keys())}")
    batch: dict[str, Any] = {}
    for k in keys:
        values = [s[k] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[k] = _stack(k, values)
        elif isinstance(first, bool):
            batch[k] = torch.tensor(values, dtype=torch.bool)
        elif isinstance(first, int) and all(isinstance(v, int) for v in values):
            batch[k] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float) and all(isinstance(v, (int, float)) for v in values):
            batch[k] = torch.tensor(values, dtype=torch.float32)
        elif k == "dataset" and all(v == first for v in values):
            batch[k] = first
        else:
            batch[k] = values
    return batch


def _stack(key: str, values: list[torch.Tensor]) -> torch.Tensor:
    shape = values[0].shape
    if all(v.shape == shape for v in values):
        return torch.stack(values, out=_empty(values[0], (len(values), *shape)))
    rest = shape[1:]
    if any(v.dim() == 0 or v.shape[1:] != rest for v in values):
        raise ValueError(f"collate: field {key!r} has shapes that differ beyond dim 0: "
                         f"{sorted({tuple(v.shape) for v in values})}")
    n = max(v.shape[0] for v in values)
    out = _empty(values[0], (len(values), n, *rest)).zero_()
    for i, v in enumerate(values):
        out[i, : v.shape[0]] = v
    return out


def _empty(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor; in a DataLoader worker it is allocated in shared memory, so
    the batch reaches the main process without another copy (as ``default_collate`` does)."""
    if get_worker_info() is None:
        return like.new_empty(shape)
    numel = math.prod(shape)
    storage = like._typed_storage()._new_shared(numel, device=like.device)
    return like.new(storage).resize_(*shape)

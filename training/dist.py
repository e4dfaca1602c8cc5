"""Distributed helpers that work the same with or without ``torch.distributed``.

Without an initialized process group every function acts as a world of one, so evaluators
and the trainer call them unconditionally.
"""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a list of one without DDP).

    Objects travel pickled between our own ranks (never from files or users); keep them
    small: sums, or the bytes of a spooled shard at evaluation time.
    """
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

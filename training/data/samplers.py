"""Multi-task batch sampling: every batch comes from one dataset.

``MultiTaskBatchSampler`` is a DataLoader ``batch_sampler`` over the concatenation of the
datasets (``torch.utils.data.ConcatDataset``, in the order given): it yields lists of
*global* indices, all inside one dataset. Strategies choose which dataset each batch comes
from:

* ``size_proportional``: an epoch has exactly ``batches(d)`` batches of dataset d, in a
  shuffled order, so datasets are seen in proportion to their size;
* ``temperature``: each batch's dataset drawn i.i.d. with p(d) proportional to
  ``weight(d) * size(d) ** (1 / T)`` (T = 1 is proportional, large T tends to uniform;
  ``weights`` default to 1); the epoch has as many batches as ``size_proportional``; a
  dataset that runs out reshuffles and goes on;
* ``round_robin``: datasets take turns, d0, d1, ..., d0, d1, ...; the epoch ends when the
  largest dataset has been seen once.

``weights`` (one per dataset, ``datasets.<name>.sampling_weight`` in the trainer's config)
act under ``temperature`` only, as MMF's sampling ratios; the other strategies refuse any
weight but 1 rather than ignore it.

No communication is needed between ranks: every random choice comes from a generator
seeded by ``(seed, epoch)``, identical on every rank; only the rows differ, each rank
taking ``perm[rank::world_size]`` of a dataset's permutation (padded by wrapping around so
all ranks have the same count, as ``DistributedSampler`` does). ``batch_size`` is per rank.

Resume: ``state_dict()`` holds ``epoch`` and ``position`` (batches already consumed in the
epoch, which the trainer sets; the DataLoader prefetches, so the sampler cannot know).
After ``load_state_dict``, the next iteration skips exactly those batches.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch

STRATEGIES = ("size_proportional", "temperature", "round_robin")


class MultiTaskBatchSampler:
    def __init__(
        self,
        sizes: Sequence[int],
        *,
        batch_size: int,
        strategy: str = "size_proportional",
        temperature: float = 2.0,
        weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown sampling strategy {strategy!r}; known: {STRATEGIES}")
        if not sizes or any(n <= 0 for n in sizes):
            raise ValueError(f"every dataset needs at least one sample, got sizes {list(sizes)}")
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError("batch_size and world_size must be positive, 0 <= rank < world_size")
        if strategy == "temperature" and temperature <= 0:
            raise ValueError("temperature must be positive")
        self.weights = [1.0] * len(sizes) if weights is None else [float(w) for w in weights]
        if len(self.weights) != len(sizes) or not all(
                math.isfinite(w) and w > 0 for w in self.weights):
            raise ValueError(f"weights must be one positive number per dataset ({len(sizes)}), "
                             f"got {list(weights or [])}")
        if strategy != "temperature" and any(w != 1.0 for w in self.weights):
            raise ValueError(f"sampling weights {self.weights} need the temperature strategy; "
                             f"{strategy!r} has no use for them")
        self.sizes = list(sizes)
        self.offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        self.batch_size = batch_size
        self.strategy = strategy
        self.temperature = temperature
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0

    # -- per-dataset bookkeeping -------------------------------------------------------
    def shard_size(self, d: int) -> int:
        """Rows of dataset d on each rank (equal on all ranks)."""
        return math.ceil(self.sizes[d] / self.world_size)

    def batches(self, d: int) -> int:
        """Batches of dataset d per pass over its shard."""
        n = self.shard_size(d)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _shard(self, d: int, cycle: int) -> list[int]:
        n = self.sizes[d]
        if self.shuffle:
            g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, d, cycle))
            perm = torch.randperm(n, generator=g).tolist()
        else:
            perm = list(range(n))
        total = self.shard_size(d) * self.world_size
        perm = (perm * math.ceil(total / n))[:total]  # wrap around: equal shards
        return perm[self.rank :: self.world_size]

    # -- the schedule ------------------------------------------------------------------
    def schedule(self) -> list[int]:
        """Dataset index of every batch of the current epoch (identical on all ranks)."""
        counts = [max(1, self.batches(d)) for d in range(len(self.sizes))]
        g = torch.Generator().manual_seed(_mix(self.seed, self.epoch, -1, 0))
        if self.strategy == "size_proportional":
            order = [d for d, c in enumerate(counts) for _ in range(c)]
            if self.shuffle:
                order = [order[i] for i in torch.randperm(len(order), generator=g).tolist()]
            return order
        if self.strategy == "temperature":
            weights = torch.tensor([w * n ** (1.0 / self.temperature)
                                    for w, n in zip(self.weights, self.sizes)],
                                   dtype=torch.float64)
            draws = torch.multinomial(weights / weights.sum(), sum(counts), replacement=True,
                                      generator=g)
            return draws.tolist()
        longest = max(counts)
        return [d for _ in range(longest) for d in range(len(self.sizes))]

    def __iter__(self) -> Iterator[list[int]]:
        schedule = self.schedule()
        start, self.position = self.position, 0
        cursors = [0] * len(self.sizes)
        cycles = [0] * len(self.sizes)
        shards = [self._shard(d, 0) for d in range(len(self.sizes))]
        for step, d in enumerate(schedule):
            shard = shards[d]
            if cursors[d] + self.batch_size > len(shard) and (
                self.drop_last or cursors[d] >= len(shard)
            ):
                cycles[d] += 1  # this dataset is exhausted: a fresh permutation
                shards[d] = shard = self._shard(d, cycles[d])
                cursors[d] = 0
            rows = shard[cursors[d] : cursors[d] + self.batch_size]
            cursors[d] += self.batch_size
            if step < start:
                continue  # already consumed before the resume
            yield [self.offsets[d] + i for i in rows]

    def __len__(self) -> int:
        return len(self.schedule())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class ShardSampler(torch.utils.data.Sampler[int]):
    """Evaluation sampler: rank r takes indices r, r + W, r + 2W, ... in order, without the
    padding ``DistributedSampler`` adds, so every sample is evaluated exactly once across
    ranks (ranks may get one sample more or less than others)."""

    def __init__(self, size: int, *, rank: int = 0, world_size: int = 1) -> None:
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError("world_size must be positive and 0 <= rank < world_size")
        self.size, self.rank, self.world_size = size, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


def _mix(*parts: int) -> int:
    """A 63-bit seed from several integers (stable across processes, unlike ``hash``)."""
    h = 1469598103934665603
    for p in parts:
        h ^= p & 0xFFFFFFFFFFFFFFFF
        h = (h * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF

"""VisDial v1.0 metrics: R@1/5/10, mean rank, MRR and NDCG, with streaming accumulators.

Reproduces the official VisDial evaluation of ``batra-mlp-lab/visdial-challenge-starter-pytorch``,
``visdialch/metrics.py`` (``scores_to_ranks``, ``SparseGTMetrics``, ``NDCG``):

* Ranks: the options of one round are sorted by score in descending order; the option placed
  at position j (0-based) gets rank j + 1, so ranks run 1..O with 1 = best.
* Sparse metrics, from the rank of the ground-truth option of every (dialog, round):
  ``r@k`` = mean of (rank <= k) for k = 1, 5, 10, as a fraction in [0, 1]; mean rank; MRR = mean
  of 1 / rank. The starter code names the mean rank ``"mean"``; here it is ``"mean_rank"``.
* NDCG, on the one densely annotated round per image: k = number of options whose relevance is
  non-zero; DCG = sum over the predicted top k options (best first, position i = 0..k-1) of
  relevance / log2(i + 2); the ideal DCG is the same sum over the relevances sorted in descending
  order; NDCG = DCG / ideal DCG, averaged (plain mean) over the evaluated rounds. Only the top k
  positions count: with a single relevant option, NDCG is 1 when it is ranked first, else 0.

Deliberate differences, none of which changes a well-defined result:

* Ties in scores. The starter code calls ``Tensor.sort(descending=True)`` without ``stable``, so
  the order of tied options is whatever torch's unstable sort does: it depends on the torch
  version, the device and even the number of options (with torch 2.x on CPU, at most 16 options
  come out in option-index order, while 100 tied options come out scrambled). Here the sort is
  stable: **tied options are ranked in increasing option index** (option 0 before option 3).
  EvalAI submissions carry ranks (a permutation), which have no ties, so this only affects
  metrics computed from scores.
* Precision: sums are float64 (the starter code computes DCG in float32).
* A round whose relevance is all zero has k = 0, and the starter code divides 0 by 0: that
  round's NDCG is NaN and so is the whole average. Such rows are refused here with ValueError
  (drop them before evaluating); so are negative or non-finite relevances, which VisDial's
  dense annotations (values in [0, 1]) never contain.
* The starter code returns ``{}`` when nothing was observed; the accumulators here do the same,
  while the one-shot functions raise ValueError on empty input.

Accumulators keep a handful of float64 running sums (memory constant in the number of
samples). ``state()`` exposes them so that DDP ranks can add them up (e.g. ``all_reduce`` of
``torch.tensor(list(acc.state().values()), dtype=torch.float64)``) and ``merge`` them.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import torch

from training.registry import METRICS

__all__ = [
    "NDCGAccumulator",
    "RankingAccumulator",
    "check_ranks",
    "gt_option_ranks",
    "ndcg_from_ranks",
    "ndcg_from_scores",
    "ranking_metrics",
    "scores_to_ranks",
]

RECALL_AT = (1, 5, 10)


# --------------------------------------------------------------------------- ranks


def _descending_order(scores: torch.Tensor) -> torch.Tensor:
    """(..., O) scores -> (..., O) option indices, best first; ties in increasing index."""
    return torch.sort(scores, dim=-1, descending=True, stable=True).indices


def scores_to_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Rank of every option from its score: (..., O) float -> (..., O) int64 in 1..O, 1 = best.

    As the starter code: sort descending, the option at sorted position j gets rank j + 1. Tied
    scores are ranked in increasing option index (stable sort; see the module docstring).
    """
    scores = torch.as_tensor(scores)
    if scores.dim() < 1 or scores.shape[-1] < 1:
        raise ValueError(
            f"scores must have a non-empty last (options) dim, got {tuple(scores.shape)}"
        )
    order = _descending_order(scores)  # (..., O) option index at each position
    positions = torch.arange(1, scores.shape[-1] + 1, device=order.device, dtype=torch.int64)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, positions.expand_as(order))  # ranks[order[j]] = j + 1
    return ranks


def gt_option_ranks(scores: torch.Tensor, gt_index: torch.Tensor) -> torch.Tensor:
    """Rank of the ground-truth option: scores (..., O), 0-based gt_index (...) -> (...) int64.

    The input of ``ranking_metrics`` as the starter code's ``SparseGTMetrics.observe`` builds it.
    """
    scores = torch.as_tensor(scores)
    gt_index = torch.as_tensor(gt_index, device=scores.device).long()
    if tuple(gt_index.shape) != tuple(scores.shape[:-1]):
        raise ValueError(
            f"gt_index shape {tuple(gt_index.shape)} must be scores shape without the options "
            f"dim, {tuple(scores.shape[:-1])}"
        )
    num_options = scores.shape[-1]
    if gt_index.numel() and (int(gt_index.min()) < 0 or int(gt_index.max()) >= num_options):
        raise ValueError(f"gt_index must lie in 0..{num_options - 1} (0-based option indices)")
    ranks = scores_to_ranks(scores)  # (..., O)
    return ranks.gather(-1, gt_index.unsqueeze(-1)).squeeze(-1)


# ------------------------------------------------------------------ sparse metrics


def _gt_rank_values(gt_ranks: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Any-shape ground-truth ranks -> flat float64 tensor, checked to be integers >= 1."""
    ranks = torch.as_tensor(gt_ranks).detach().reshape(-1)
    if ranks.dtype == torch.bool or ranks.is_complex():
        raise ValueError(f"gt ranks must be integers >= 1, got dtype {ranks.dtype}")
    values = ranks.to(torch.float64)
    if values.numel():
        if not bool(torch.isfinite(values).all()) or bool((values != values.round()).any()):
            raise ValueError("gt ranks must be integers >= 1 (found a non-integer value)")
        if float(values.min()) < 1:
            raise ValueError(f"gt ranks must be >= 1 (1 = best), found {float(values.min()):g}")
    return values


class _SumAccumulator:
    """Named float64 running sums that add across DDP ranks: ``state()`` / ``merge(state)``.
    Subclasses name the sums in ``STATE_KEYS`` (``"count"`` first)."""

    STATE_KEYS: tuple[str, ...] = ("count",)

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._sums: dict[str, float] = dict.fromkeys(self.STATE_KEYS, 0.0)

    def state(self) -> dict[str, float]:
        """The running float64 sums, keys in ``STATE_KEYS`` order (add them across ranks)."""
        return dict(self._sums)

    def merge(self, state: Mapping[str, float]) -> None:
        """Add another accumulator's ``state()`` (e.g. from another DDP rank) into this one."""
        if set(state) != set(self.STATE_KEYS):
            raise ValueError(f"state keys {sorted(state)} do not match the expected "
                             f"{list(self.STATE_KEYS)}")
        for key in self.STATE_KEYS:
            self._sums[key] += float(state[key])


class RankingAccumulator(_SumAccumulator):
    """Streaming R@1/5/10, mean rank and MRR from ground-truth ranks (constant memory).

    ``update`` takes the rank (1 = best) of the ground-truth option for any number of
    (dialog, round) pairs, in any shape. ``compute`` returns the ``ranking_metrics`` dict, or
    ``{}`` when nothing was observed (as the starter code's ``retrieve``).
    """

    STATE_KEYS = ("count", "sum_r@1", "sum_r@5", "sum_r@10", "sum_rank", "sum_reciprocal_rank")

    def update(self, gt_ranks: torch.Tensor | Sequence[int]) -> None:
        ranks = _gt_rank_values(gt_ranks)  # (n,) float64
        self._sums["count"] += float(ranks.numel())
        for k in RECALL_AT:
            self._sums[f"sum_r@{k}"] += float((ranks <= k).sum())
        self._sums["sum_rank"] += float(ranks.sum())
        self._sums["sum_reciprocal_rank"] += float(ranks.reciprocal().sum())

    def compute(self) -> dict[str, float]:
        count = self._sums["count"]
        if count == 0:
            return {}
        out = {f"r@{k}": self._sums[f"sum_r@{k}"] / count for k in RECALL_AT}
        out["mean_rank"] = self._sums["sum_rank"] / count
        out["mrr"] = self._sums["sum_reciprocal_rank"] / count
        return out


def ranking_metrics(gt_ranks: torch.Tensor | Sequence[int]) -> dict[str, float]:
    """``{"r@1", "r@5", "r@10", "mean_rank", "mrr"}`` from ground-truth ranks (any shape).

    Recalls are fractions in [0, 1] (r@k = mean of rank <= k), MRR = mean of 1 / rank, as in
    the starter code's ``SparseGTMetrics``. Empty input raises ValueError.
    """
    acc = RankingAccumulator()
    acc.update(gt_ranks)
    result = acc.compute()
    if not result:
        raise ValueError("ranking_metrics needs at least one ground-truth rank")
    return result


# ------------------------------------------------------------------------ NDCG


def _relevance_rows(
    relevance: torch.Tensor, shape: torch.Size, device: torch.device
) -> torch.Tensor:
    """Validated (N, O) float64 relevance on ``device``."""
    rel = torch.as_tensor(relevance).detach()
    if tuple(rel.shape) != tuple(shape):
        raise ValueError(
            f"relevance shape {tuple(rel.shape)} must equal the scores/ranks shape {tuple(shape)}"
        )
    rel = rel.to(device=device, dtype=torch.float64)
    if not bool(torch.isfinite(rel).all()):
        raise ValueError("relevance must be finite")
    if bool((rel < 0).any()):
        raise ValueError("relevance must be >= 0 (VisDial dense relevances lie in [0, 1])")
    empty = (rel == 0).all(dim=-1).nonzero().flatten().tolist()
    if empty:
        shown = ", ".join(str(i) for i in empty[:10]) + (", ..." if len(empty) > 10 else "")
        raise ValueError(
            f"relevance row(s) {shown} are all zero: NDCG is 0/0 there (k = 0; the starter "
            "code's NDCG would return NaN for the whole average); leave such rounds out"
        )
    return rel


def _ndcg_rows(order: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """Per-round NDCG: order (N, O) option indices best first, relevance (N, O) -> (N,) float64."""
    num_options = order.shape[-1]
    positions = torch.arange(num_options, device=order.device)  # (O,)
    discount = torch.log2(positions.to(torch.float64) + 2.0)  # (O,) log2(i + 2)
    k = (relevance != 0).sum(dim=-1)  # (N,)
    in_top_k = positions.unsqueeze(0) < k.unsqueeze(1)  # (N, O)
    zero = relevance.new_zeros(())
    gained = relevance.gather(-1, order)  # (N, O) relevance in predicted order
    dcg = torch.where(in_top_k, gained / discount, zero).sum(dim=-1)  # (N,)
    ideal = torch.sort(relevance, dim=-1, descending=True).values  # (N, O)
    ideal_dcg = torch.where(in_top_k, ideal / discount, zero).sum(dim=-1)  # (N,)
    return dcg / ideal_dcg


def _check_2d(name: str, t: torch.Tensor) -> None:
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty (N, O) tensor, got shape {tuple(t.shape)}")


def _order_from_scores(scores: torch.Tensor) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach()
    _check_2d("scores", scores)
    return _descending_order(scores)  # (N, O)


def _order_from_ranks(ranks: torch.Tensor) -> torch.Tensor:
    ranks = torch.as_tensor(ranks).detach()
    _check_2d("ranks", ranks)
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be an integer tensor, got dtype {ranks.dtype}")
    num_options = ranks.shape[1]
    expected = torch.arange(1, num_options + 1, device=ranks.device, dtype=ranks.dtype)
    ok = (torch.sort(ranks, dim=-1).values == expected).all(dim=-1)  # (N,)
    if not bool(ok.all()):
        row = int((~ok).nonzero()[0, 0])
        try:
            check_ranks(ranks[row].tolist(), num_options)
        except ValueError as err:
            raise ValueError(f"ranks row {row}: {err}") from None
        raise ValueError(f"ranks row {row} is not a permutation of 1..{num_options}")
    # ranks form a permutation per row, so the ascending order is unique: position j holds
    # the option of rank j + 1 (the option of rank 1 is the top prediction).
    return torch.argsort(ranks, dim=-1)


def ndcg_from_scores(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    """Mean NDCG over rounds: scores (N, O), relevance (N, O) -> float in [0, 1].

    Options are ordered by ``scores_to_ranks`` (descending, ties in increasing option index).
    A row of all-zero, negative or non-finite relevance raises ValueError.
    """
    order = _order_from_scores(scores)
    rel = _relevance_rows(relevance, order.shape, order.device)
    return float(_ndcg_rows(order, rel).mean())


def ndcg_from_ranks(ranks: torch.Tensor, relevance: torch.Tensor) -> float:
    """Mean NDCG over rounds from submitted ranks: ranks (N, O), relevance (N, O) -> float.

    Each row of ``ranks`` must be a permutation of 1..O (the option of rank 1 is the top
    prediction), as in an EvalAI result file. Equal to ``ndcg_from_scores(scores, relevance)``
    when ``ranks = scores_to_ranks(scores)``.
    """
    order = _order_from_ranks(ranks)
    rel = _relevance_rows(relevance, order.shape, order.device)
    return float(_ndcg_rows(order, rel).mean())


class NDCGAccumulator(_SumAccumulator):
    """Streaming mean NDCG (constant memory): sum of per-round NDCG and the number of rounds.

    ``compute`` returns ``{"ndcg": mean}``, or ``{}`` when nothing was observed (as the starter
    code's ``NDCG.retrieve``).
    """

    STATE_KEYS = ("count", "sum_ndcg")

    def _add(self, order: torch.Tensor, relevance: torch.Tensor) -> None:
        rel = _relevance_rows(relevance, order.shape, order.device)
        per_round = _ndcg_rows(order, rel)  # (N,)
        self._sums["count"] += float(per_round.numel())
        self._sums["sum_ndcg"] += float(per_round.sum())

    def update_scores(self, scores: torch.Tensor, relevance: torch.Tensor) -> None:
        """Add rounds from option scores (N, O) and relevance (N, O)."""
        self._add(_order_from_scores(scores), relevance)

    def update_ranks(self, ranks: torch.Tensor, relevance: torch.Tensor) -> None:
        """Add rounds from ranks (N, O), each row a permutation of 1..O, and relevance (N, O)."""
        self._add(_order_from_ranks(ranks), relevance)

    def compute(self) -> dict[str, float]:
        count = self._sums["count"]
        if count == 0:
            return {}
        return {"ndcg": self._sums["sum_ndcg"] / count}


# ------------------------------------------------------------- EvalAI rank lists


def check_ranks(ranks: Sequence[int], num_options: int = 100) -> None:
    """Raise ValueError unless ``ranks`` is a permutation of 1..num_options.

    The message names the first problem found, checked in this order: wrong length,
    non-integer entry (bools and floats such as ``3.0`` are refused), entry out of range,
    duplicate rank (with the ranks then missing).
    """
    if isinstance(num_options, bool) or not isinstance(num_options, int) or num_options < 1:
        raise ValueError(f"num_options must be a positive int, got {num_options!r}")
    if isinstance(ranks, (str, bytes, Mapping)):
        raise ValueError(f"ranks must be a list of ints, got {type(ranks).__name__}")
    values = list(ranks)
    if len(values) != num_options:
        raise ValueError(f"wrong length: expected {num_options} ranks, got {len(values)}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"non-integer rank at position {i}: {v!r}")
    for i, v in enumerate(values):
        if not 1 <= int(v) <= num_options:
            raise ValueError(
                f"rank out of range at position {i}: {int(v)} (allowed 1..{num_options})"
            )
    first_seen: dict[int, int] = {}
    for i, v in enumerate(values):
        r = int(v)
        if r in first_seen:
            missing = sorted(set(range(1, num_options + 1)) - {int(x) for x in values})
            raise ValueError(
                f"duplicate rank {r} at positions {first_seen[r]} and {i} "
                f"(missing ranks: {missing[:10]}{' ...' if len(missing) > 10 else ''})"
            )
        first_seen[r] = i


METRICS.register("visdial_ranking", ranking_metrics)
METRICS.register("visdial_ndcg", ndcg_from_ranks)

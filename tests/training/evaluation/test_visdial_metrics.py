"""VisDial metrics against hand-computed values and the starter code's definitions."""

import math

import pytest
import torch

from training.evaluation.visdial import (
    NDCGAccumulator,
    RankingAccumulator,
    check_ranks,
    gt_option_ranks,
    ndcg_from_ranks,
    ndcg_from_scores,
    ranking_metrics,
    scores_to_ranks,
)
from training.registry import METRICS


def _loop_ranks(scores: torch.Tensor) -> torch.Tensor:
    """Reference: the starter code's algorithm written as plain loops, for tie-free scores."""
    flat = scores.reshape(-1, scores.shape[-1])
    ranks = torch.zeros_like(flat, dtype=torch.int64)
    for i in range(flat.shape[0]):
        order = sorted(range(flat.shape[1]), key=lambda j: -float(flat[i, j]))
        for position, option in enumerate(order):
            ranks[i, option] = position + 1
    return ranks.reshape(scores.shape)


# ----------------------------------------------------------------------- ranks


def test_scores_to_ranks_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.5], [5.0, -1.0, 2.0, 3.0, 4.0]])
    assert scores_to_ranks(scores).tolist() == [[5, 1, 4, 2, 3], [1, 5, 4, 3, 2]]
    assert scores_to_ranks(scores).dtype == torch.int64


def test_scores_to_ranks_matches_loop_reference_on_3d_input():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 10, 100, generator=g)  # (batch, rounds, options), ties improbable
    assert torch.unique(scores).numel() == scores.numel()
    ranks = scores_to_ranks(scores)
    assert ranks.shape == (3, 10, 100)
    assert torch.equal(ranks, _loop_ranks(scores))
    assert torch.equal(torch.sort(ranks, dim=-1).values[0, 0], torch.arange(1, 101))


def test_ties_are_ranked_in_increasing_option_index():
    # options 1 and 3 tie at 0.9, options 2 and 4 tie at 0.5
    scores = torch.tensor([0.2, 0.9, 0.5, 0.9, 0.5])
    # sorted order: 1, 3, 2, 4, 0 -> ranks of options 0..4
    assert scores_to_ranks(scores).tolist() == [5, 1, 3, 2, 4]
    # 100 options all tied: identity ranking (torch's unstable default sort would scramble it)
    assert scores_to_ranks(torch.zeros(2, 100)).tolist() == [list(range(1, 101))] * 2


def test_ndcg_follows_the_tie_order():
    scores = torch.tensor([[0.2, 0.9, 0.5, 0.9, 0.5]])
    # a single relevant option: NDCG is 1 iff it is ranked first
    only_1 = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]])
    only_3 = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    assert ndcg_from_scores(scores, only_1) == 1.0
    assert ndcg_from_scores(scores, only_3) == 0.0  # tied with option 1 but ranked second
    # k = 2 over options 2 and 4 (tied at 0.5, ranked 3rd and 4th): top-2 are options 1, 3
    assert ndcg_from_scores(scores, torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]])) == 0.0
    # k = 2 over options 3 and 2: top-2 = (1, 3) -> DCG = 0 + 1/log2(3); ideal 1 + 1/log2(3)
    rel = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]])
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_from_scores(scores, rel) == pytest.approx(expected, abs=1e-12)


def test_gt_option_ranks():
    scores = torch.tensor([[[0.1, 0.9, 0.3, 0.7, 0.5], [5.0, -1.0, 2.0, 3.0, 4.0]]])  # (1, 2, 5)
    gt = torch.tensor([[3, 1]])  # 0-based gt option per round
    assert gt_option_ranks(scores, gt).tolist() == [[2, 5]]
    with pytest.raises(ValueError, match=r"0\.\.4"):
        gt_option_ranks(scores, torch.tensor([[5, 0]]))
    with pytest.raises(ValueError, match="shape"):
        gt_option_ranks(scores, torch.tensor([3, 1]))


# -------------------------------------------------------------- sparse metrics


def test_ranking_metrics_by_hand():
    m = ranking_metrics(torch.tensor([1, 3, 7, 12, 2]))
    assert set(m) == {"r@1", "r@5", "r@10", "mean_rank", "mrr"}
    assert m["r@1"] == pytest.approx(1 / 5)  # only rank 1
    assert m["r@5"] == pytest.approx(3 / 5)  # 1, 3, 2
    assert m["r@10"] == pytest.approx(4 / 5)  # all but 12
    assert m["mean_rank"] == pytest.approx(25 / 5)
    # (1 + 1/3 + 1/7 + 1/12 + 1/2) / 5 = (173/84) / 5
    assert m["mrr"] == pytest.approx(173 / 420, abs=1e-15)


def test_ranking_metrics_accepts_any_shape_and_lists():
    as_list = ranking_metrics([1, 3, 7, 12, 2, 100])
    as_2d = ranking_metrics(torch.tensor([[1, 3, 7], [12, 2, 100]]))
    assert as_list == as_2d
    assert as_list["mean_rank"] == pytest.approx(125 / 6)
    assert as_list["r@10"] == pytest.approx(4 / 6)


def test_ranking_metrics_errors():
    with pytest.raises(ValueError, match="at least one"):
        ranking_metrics([])
    with pytest.raises(ValueError, match=">= 1"):
        ranking_metrics([0, 1])
    with pytest.raises(ValueError, match="non-integer"):
        ranking_metrics(torch.tensor([1.5, 2.0]))


def test_ranking_accumulator_chunks_merge_and_reset():
    g = torch.Generator().manual_seed(1)
    ranks = torch.randint(1, 101, (40, 10), generator=g)
    whole = ranking_metrics(ranks)

    chunked = RankingAccumulator()
    for chunk in ranks.split(7):
        chunked.update(chunk)
    for key, value in whole.items():
        assert chunked.compute()[key] == pytest.approx(value, abs=1e-12)

    a, b = RankingAccumulator(), RankingAccumulator()
    a.update(ranks[:13])
    b.update(ranks[13:])
    a.merge(b.state())
    assert a.state()["count"] == 400.0
    for key, value in whole.items():
        assert a.compute()[key] == pytest.approx(value, abs=1e-12)

    assert list(a.state()) == list(RankingAccumulator.STATE_KEYS)
    with pytest.raises(ValueError, match="state keys"):
        a.merge({"count": 1.0})
    a.reset()
    assert a.compute() == {}  # nothing observed, like the starter code's retrieve()


# ------------------------------------------------------------------------ NDCG


def test_ndcg_partial_relevance_by_hand():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.5]])  # order: 1, 3, 4, 2, 0
    rel = torch.tensor([[0.0, 0.5, 1.0, 0.0, 0.5]])  # k = 3
    # DCG over options 1, 3, 4: 0.5/log2(2) + 0/log2(3) + 0.5/log2(4) = 0.75
    # ideal over 1.0, 0.5, 0.5:  1/log2(2) + 0.5/log2(3) + 0.5/log2(4) = 1.25 + 0.5/log2(3)
    expected = 0.75 / (1.25 + 0.5 / math.log2(3))
    assert ndcg_from_scores(scores, rel) == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.4790909, abs=1e-7)


def test_ndcg_single_relevant_option_and_mean_over_rounds():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.7, 0.5], [0.1, 0.9, 0.3, 0.7, 0.5]])
    rel = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])
    # round 0: the relevant option is ranked 1st -> 1; round 1: ranked 2nd, k = 1 -> 0
    assert ndcg_from_scores(scores, rel) == pytest.approx(0.5)
    # the relevance value itself does not matter with one relevant option
    assert ndcg_from_scores(scores[:1], 0.3 * rel[:1]) == pytest.approx(1.0)
    partial = torch.tensor([[0.0, 0.5, 1.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0, 0.0]])
    expected = (0.75 / (1.25 + 0.5 / math.log2(3)) + 1.0) / 2
    assert ndcg_from_scores(scores, partial) == pytest.approx(expected, abs=1e-12)


def test_ndcg_from_ranks_equals_ndcg_from_scores():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(32, 100, generator=g)
    scores[:, ::9] = 0.0  # ties among eleven options per row
    rel = torch.randint(0, 5, (32, 100), generator=g).double() / 4
    rel[:, 0] = 1.0  # every row has a relevant option
    ranks = scores_to_ranks(scores)
    assert ndcg_from_ranks(ranks, rel) == ndcg_from_scores(scores, rel)
    # an EvalAI-style submission: nested lists of ints, float32 relevance
    from_lists = ndcg_from_ranks(torch.tensor(ranks.tolist()), rel.float())
    assert from_lists == ndcg_from_scores(scores, rel)


def test_ndcg_from_ranks_uses_rank_1_as_top():
    ranks = torch.tensor([[5, 1, 4, 2, 3]])  # top prediction: option 1, then 3, 4, 2, 0
    rel = torch.tensor([[0.0, 0.5, 1.0, 0.0, 0.5]])
    expected = 0.75 / (1.25 + 0.5 / math.log2(3))
    assert ndcg_from_ranks(ranks, rel) == pytest.approx(expected, abs=1e-12)


def test_ndcg_errors():
    scores = torch.tensor([[0.1, 0.9, 0.3], [0.3, 0.2, 0.1]])
    with pytest.raises(ValueError, match=r"row\(s\) 1 are all zero"):
        ndcg_from_scores(scores, torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match=">= 0"):
        ndcg_from_scores(scores, torch.tensor([[0.0, 1.0, -0.5], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="finite"):
        ndcg_from_scores(scores, torch.tensor([[0.0, 1.0, math.nan], [1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="shape"):
        ndcg_from_scores(scores, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"\(N, O\)"):
        ndcg_from_scores(scores[0], torch.ones(3))
    rel = torch.ones(2, 3)
    with pytest.raises(ValueError, match="ranks row 1: duplicate rank 1"):
        ndcg_from_ranks(torch.tensor([[1, 2, 3], [1, 1, 2]]), rel)
    with pytest.raises(ValueError, match="ranks row 0: rank out of range"):
        ndcg_from_ranks(torch.tensor([[0, 1, 2], [1, 2, 3]]), rel)
    with pytest.raises(ValueError, match="integer tensor"):
        ndcg_from_ranks(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), rel)


def test_ndcg_accumulator_chunks_merge_and_ranks():
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(50, 100, generator=g)
    rel = (torch.rand(50, 100, generator=g) < 0.1).double() * 0.5
    rel[:, 7] = 1.0
    whole = ndcg_from_scores(scores, rel)

    acc = NDCGAccumulator()
    for s, r in zip(scores.split(8), rel.split(8)):
        acc.update_scores(s, r)
    assert acc.compute()["ndcg"] == pytest.approx(whole, abs=1e-12)

    a, b = NDCGAccumulator(), NDCGAccumulator()
    a.update_ranks(scores_to_ranks(scores[:20]), rel[:20])
    b.update_scores(scores[20:], rel[20:])
    a.merge(b.state())
    assert a.state() == {"count": 50.0, "sum_ndcg": pytest.approx(whole * 50, abs=1e-10)}
    assert a.compute() == {"ndcg": pytest.approx(whole, abs=1e-12)}
    a.reset()
    assert a.compute() == {}


# ------------------------------------------------------------ property tests


def _random_relevance(g: torch.Generator, n: int, o: int, max_relevant: int) -> torch.Tensor:
    """(n, o) relevance in {0, .25, .5, .75, 1} with 1..max_relevant non-zero options per row."""
    rel = torch.zeros(n, o, dtype=torch.float64)
    for i in range(n):
        k = int(torch.randint(1, max_relevant + 1, (1,), generator=g))
        options = torch.randperm(o, generator=g)[:k]
        rel[i, options] = torch.randint(1, 5, (k,), generator=g).double() / 4
    return rel


def test_perfect_scores_give_perfect_metrics():
    g = torch.Generator().manual_seed(4)
    scores = torch.rand(16, 10, 100, generator=g)
    gt = torch.randint(0, 100, (16, 10), generator=g)
    scores.scatter_(-1, gt.unsqueeze(-1), 2.0)  # gt option strictly highest
    m = ranking_metrics(gt_option_ranks(scores, gt))
    assert m == {"r@1": 1.0, "r@5": 1.0, "r@10": 1.0, "mean_rank": 1.0, "mrr": 1.0}

    rel = _random_relevance(g, 64, 100, max_relevant=40)
    noise = torch.rand(64, 100, generator=g, dtype=torch.float64)
    by_relevance = 10 * rel + noise  # relevant options first, ordered by relevance
    assert ndcg_from_scores(by_relevance, rel) == pytest.approx(1.0, abs=1e-12)
    assert ndcg_from_ranks(scores_to_ranks(by_relevance), rel) == pytest.approx(1.0, abs=1e-12)


def test_reversed_scores_give_zero_ndcg_and_bad_ranks():
    g = torch.Generator().manual_seed(5)
    rel = _random_relevance(g, 64, 100, max_relevant=40)  # >= 60 irrelevant options per row
    noise = torch.rand(64, 100, generator=g, dtype=torch.float64)
    reversed_scores = -(10 * rel) + noise  # every relevant option below every irrelevant one
    assert ndcg_from_scores(reversed_scores, rel) == 0.0
    gt = torch.randint(0, 100, (64,), generator=g)
    worst = torch.zeros(64, 100).scatter_(-1, gt.unsqueeze(-1), -1.0)  # gt lowest
    m = ranking_metrics(gt_option_ranks(worst, gt))
    assert m["r@10"] == 0.0
    assert m["mean_rank"] == 100.0
    assert m["mrr"] == pytest.approx(0.01)


def test_ndcg_is_invariant_to_a_consistent_option_permutation():
    g = torch.Generator().manual_seed(6)
    scores = torch.randn(32, 100, generator=g, dtype=torch.float64)  # no ties
    rel = _random_relevance(g, 32, 100, max_relevant=30)
    base = ndcg_from_scores(scores, rel)
    assert 0.0 < base < 1.0
    for _ in range(3):
        perm = torch.randperm(100, generator=g)
        assert ndcg_from_scores(scores[:, perm], rel[:, perm]) == pytest.approx(base, abs=1e-12)
        permuted_ranks = scores_to_ranks(scores)[:, perm]
        assert ndcg_from_ranks(permuted_ranks, rel[:, perm]) == pytest.approx(base, abs=1e-12)


# ------------------------------------------------------------------ check_ranks


def test_check_ranks_accepts_permutations():
    check_ranks(list(range(100, 0, -1)))
    check_ranks([3, 1, 2], num_options=3)
    check_ranks(tuple(range(1, 101)))


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        (list(range(1, 100)), "wrong length: expected 100 ranks, got 99"),
        (list(range(1, 102)), "wrong length: expected 100 ranks, got 101"),
        ([*range(1, 100), 2.0], "non-integer rank at position 99: 2.0"),
        ([True, *range(2, 101)], "non-integer rank at position 0: True"),
        (["1", *range(2, 101)], "non-integer rank at position 0"),
        ([0, *range(2, 101)], r"rank out of range at position 0: 0 \(allowed 1..100\)"),
        ([*range(1, 100), 101], "rank out of range at position 99: 101"),
        ([*range(1, 100), 7], r"duplicate rank 7 at positions 6 and 99 \(missing ranks: \[100\]"),
    ],
)
def test_check_ranks_errors(ranks, message):
    with pytest.raises(ValueError, match=message):
        check_ranks(ranks)


def test_check_ranks_bad_arguments():
    with pytest.raises(ValueError, match="list of ints"):
        check_ranks("123", num_options=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_options"):
        check_ranks([1], num_options=0)


def test_registered_metrics():
    assert METRICS.get("visdial_ranking") is ranking_metrics
    assert METRICS.get("visdial_ndcg") is ndcg_from_ranks

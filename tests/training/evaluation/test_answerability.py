"""VizWiz answerability metrics against hand-computed values (and sklearn when installed)."""

import numpy as np
import pytest

from training.evaluation.answerability import answerability_metrics, average_precision, f1_at
from training.registry import METRICS

# positives 0, 2, 3; scores tie at 0.8 between a positive (2) and a negative (1)
LABELS = [1, 0, 1, 1, 0]
SCORES = [0.9, 0.8, 0.8, 0.4, 0.1]


def test_average_precision_by_hand_with_a_tie():
    # thresholds (distinct scores) 0.9, 0.8, 0.4, 0.1:
    #   0.9: TP 1 FP 0 -> P 1,   R 1/3
    #   0.8: TP 2 FP 1 -> P 2/3, R 2/3   (the tied pair enters together)
    #   0.4: TP 3 FP 1 -> P 3/4, R 1
    #   0.1: TP 3 FP 2 -> P 3/5, R 1     (no recall gain)
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36
    assert average_precision(LABELS, SCORES) == pytest.approx(29 / 36, abs=1e-15)
    # ranking the tied positive strictly first instead gives 1/3 + 1/3 + 1/4 = 11/12
    assert average_precision(LABELS, [0.9, 0.8, 0.81, 0.4, 0.1]) == pytest.approx(11 / 12)
    # input order does not matter
    order = [4, 2, 0, 3, 1]
    permuted = average_precision([LABELS[i] for i in order], [SCORES[i] for i in order])
    assert permuted == pytest.approx(29 / 36, abs=1e-15)


def test_average_precision_edge_cases():
    assert average_precision([1, 1, 0, 0], [4, 3, 2, 1]) == 1.0
    # worst ranking: positive last of 4 -> P = 1/4 at its threshold
    assert average_precision([0, 0, 0, 1], [4, 3, 2, 1]) == pytest.approx(0.25)
    # all scores tied: a single threshold, AP = fraction of positives
    assert average_precision([1, 0, 0, 1, 0], [0.5] * 5) == pytest.approx(0.4)
    # any real scores, bools as labels
    assert average_precision([True, False], [-3.0, -7.5]) == 1.0


def test_f1_by_hand_and_threshold_convention():
    # >= 0.5 predicts samples 0, 1, 2: TP 2 (0, 2), FP 1 (1), FN 1 (3) -> 2*2 / (4 + 1 + 1)
    assert f1_at(LABELS, SCORES) == pytest.approx(2 / 3)
    # a score exactly at the threshold is positive by default, negative with inclusive=False
    labels, scores = [1, 1, 0], [0.5, 0.7, 0.2]
    assert f1_at(labels, scores, 0.5) == 1.0
    assert f1_at(labels, scores, 0.5, inclusive=False) == pytest.approx(2 / 3)  # 2/(2+0+1)
    # nothing predicted positive -> precision 0/0 -> 0, F1 0
    assert f1_at([1, 0], [0.1, 0.2]) == 0.0
    # neither positives nor predicted positives -> 0 (zero_division=0)
    assert f1_at([0, 0], [0.1, 0.2]) == 0.0


def test_answerability_metrics_by_hand():
    answerable = [1, 0, 0, 1, 1]
    predicted = [0.2, 0.1, 0.5, 0.6, 0.9]
    # unanswerable positives [0, 1, 1, 0, 0], scores 1 - p = [0.8, 0.9, 0.5, 0.4, 0.1]
    # AP: 0.9 pos (P 1, R 1/2), 0.8 neg, 0.5 pos (P 2/3, R 1) -> 1/2 + 1/3 = 5/6
    # F1, official strict 1 - p > 0.5: predicted 0, 1 -> TP 1 FP 1 FN 1 -> 2/4
    m = answerability_metrics(answerable, predicted)
    assert set(m) == {"average_precision", "f1"}
    assert m["average_precision"] == round(500 / 6, 2) == 83.33  # rounded as the official
    assert m["f1"] == pytest.approx(50.0)
    # with >= the p = 0.5 question would count as unanswerable: F1 would be 4/5
    assert f1_at([0, 1, 1, 0, 0], [0.8, 0.9, 0.5, 0.4, 0.1]) == pytest.approx(0.8)


def test_errors():
    with pytest.raises(ValueError, match="no label is 1"):
        average_precision([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="differ in length: 3 != 2"):
        average_precision([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in length"):
        f1_at([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 or 1"):
        average_precision([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        average_precision([1, 0], [0.1, float("nan")])
    with pytest.raises(ValueError, match="empty"):
        f1_at([], [])
    # every question answerable -> no unanswerable positive
    with pytest.raises(ValueError, match="no label is 1"):
        answerability_metrics([1, 1], [0.3, 0.9])


def test_matches_sklearn_when_available():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(20):
        n = int(rng.integers(2, 300))
        labels = rng.integers(0, 2, n)
        labels[0] = 1
        scores = np.round(rng.random(n), 1)  # many ties
        ap = metrics.average_precision_score(labels, scores)
        assert average_precision(labels, scores) == pytest.approx(ap, abs=1e-12)
        f1 = metrics.f1_score(labels, scores >= 0.5, zero_division=0)
        assert f1_at(labels, scores) == pytest.approx(f1, abs=1e-12)
        answerable = 1 - labels
        official_f1 = metrics.f1_score(labels, (1.0 - scores) > 0.5, zero_division=0)
        official_ap = metrics.average_precision_score(labels, 1.0 - scores)
        m = answerability_metrics(answerable, scores)
        assert m["average_precision"] == round(100 * official_ap, 2)
        assert m["f1"] == round(100 * official_f1, 2)


def test_registered():
    assert METRICS.get("vizwiz_answerability") is answerability_metrics

"""VizWiz answerability: average precision and F1 of detecting *unanswerable* visual questions.

Reproduces ``evaluate_unanswerability`` of the official VizWiz VQA evaluation code (Qing Li's
``vqaEval.py`` distributed with the VizWiz challenge), which does, with numpy arrays over every
image of the split::

    positives = 1 - answerable            (ground truth, 0|1)
    scores    = 1.0 - predicted_answerable (float64)
    AP        = sklearn.metrics.average_precision_score(positives, scores)
    F1        = sklearn.metrics.f1_score(positives, scores > 0.5)
    reported  = round(100 * AP, 2), round(100 * F1, 2)

Without scikit-learn, both are re-implemented here:

* ``average_precision`` follows ``average_precision_score`` for binary labels: the thresholds
  are the distinct scores, in descending order; at each, P_n = TP / (TP + FP) and
  R_n = TP / (all positives), counting every sample whose score is >= the threshold (tied
  samples enter together, so their order does not matter); AP = sum_n (R_n - R_{n-1}) * P_n
  with R_0 = 0, a step-wise sum without interpolation.
* ``f1_at`` is ``f1_score`` on the thresholded scores: F1 = 2 TP / (2 TP + FP + FN), 0 when
  that is 0/0 (``zero_division=0``, which is what sklearn's default "warn" returns).

Threshold convention. ``f1_at`` predicts positive when score >= threshold by default
(``inclusive=False`` gives the strict score > threshold). ``answerability_metrics`` uses the
official strict test ``1.0 - predicted_answerable > 0.5``: a question whose predicted
answerability is exactly 0.5 counts as predicted answerable. Results are returned unrounded
(the official script rounds to 2 decimals) under the keys ``average_precision`` and ``f1``
(the official script says ``f1_score``).

Refused with ValueError: empty or length-mismatched inputs, labels other than 0/1, NaN or
infinite scores (sklearn refuses those too) and, for AP, labels without a positive (sklearn
would warn and return a meaningless value).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from training.registry import METRICS

__all__ = ["answerability_metrics", "average_precision", "f1_at"]


def _check_inputs(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(n,) 0/1 labels and (n,) scores -> (n,) bool positives and (n,) float64 scores."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise ValueError(f"labels and scores must be 1-d, got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} != {s.shape[0]}")
    if y.shape[0] == 0:
        raise ValueError("labels and scores are empty")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"labels must be 0 or 1, got dtype {y.dtype}")
    if not np.isin(y, (0, 1)).all():
        bad = sorted({float(v) for v in y[~np.isin(y, (0, 1))]})[:5]
        raise ValueError(f"labels must be 0 or 1 (1 = positive), found {bad}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (found NaN or infinity)")
    return y.astype(bool), s


def average_precision(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """AP in [0, 1] of ranking positives (label 1) by descending score, as sklearn computes it.

    labels (n,) 0/1, scores (n,) any real. Ties: all samples sharing a score form one
    threshold. ValueError when there is no positive label or the lengths differ.
    """
    y, s = _check_inputs(labels, scores)
    num_positive = int(y.sum())
    if num_positive == 0:
        raise ValueError("average precision is undefined without positive labels (no label is 1)")
    order = np.argsort(-s, kind="stable")  # (n,) best score first
    s_sorted, y_sorted = s[order], y[order]
    # the last sample of each run of equal scores closes one threshold
    ends = np.r_[np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1]  # (T,)
    tp = np.cumsum(y_sorted, dtype=np.float64)[ends]  # (T,)
    predicted = (ends + 1).astype(np.float64)  # (T,) TP + FP at each threshold
    precision = tp / predicted
    recall = tp / num_positive
    recall_gain = np.diff(np.r_[0.0, recall])  # (T,) R_n - R_{n-1}
    return float(np.sum(recall_gain * precision))


def f1_at(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    threshold: float = 0.5,
    *,
    inclusive: bool = True,
) -> float:
    """F1 in [0, 1] of predicting positive when score >= threshold (``inclusive=False``: >).

    Precision or recall that is 0/0 counts as 0, as sklearn's ``zero_division=0``; so F1 is
    2 TP / (2 TP + FP + FN), and 0 when there are neither positives nor predicted positives.
    """
    y, s = _check_inputs(labels, scores)
    predicted = s >= threshold if inclusive else s > threshold
    tp = float(np.sum(predicted & y))
    fp = float(np.sum(predicted & ~y))
    fn = float(np.sum(~predicted & y))
    denominator = 2.0 * tp + fp + fn
    return 0.0 if denominator == 0 else 2.0 * tp / denominator


def answerability_metrics(
    answerable: Sequence[int] | npt.ArrayLike,
    predicted_answerable: Sequence[float] | npt.ArrayLike,
) -> dict[str, float]:
    """VizWiz answerability: ``{"average_precision": AP * 100, "f1": F1 * 100}``, rounded to
    2 decimals as the official code reports them.

    ``answerable`` (n,) is the ground truth (1 = answerable), ``predicted_answerable`` (n,) the
    submitted answerability scores. As the official code, the task scored is detecting
    unanswerable questions: positives ``1 - answerable``, scores ``1.0 - predicted_answerable``,
    F1 with the strict test ``score > 0.5``. ValueError when no question is unanswerable.
    """
    y, p = _check_inputs(answerable, predicted_answerable)
    positives = 1 - y.astype(np.int64)  # (n,) 1 = unanswerable
    scores = 1.0 - p  # (n,) float64, computed as the official code does
    return {
        "average_precision": round(100.0 * average_precision(positives, scores), 2),
        "f1": round(100.0 * f1_at(positives, scores, 0.5, inclusive=False), 2),
    }


METRICS.register("vizwiz_answerability", answerability_metrics)

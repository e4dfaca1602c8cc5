"""Evaluation: official metrics, streaming evaluators and EvalAI result files.

* ``vqa``: VQA accuracy (VQA v2 current/legacy, TextVQA, VizWiz), per answer/question type;
* ``answerability``: VizWiz answerability (average precision, F1 of detecting unanswerable);
* ``captions``: PTB-style tokenization, BLEU-1..4, ROUGE-L, CIDEr-D, optional METEOR;
* ``visdial``: ranks, R@k, mean rank, MRR, NDCG;
* ``evaluators``: ``reset / process / evaluate`` objects the trainer runs, gathering across
  DDP ranks;
* ``evalai``: result-file writers and validators.

``python -m training.evaluate`` scores a result file against a split's annotations.
"""

from training.evaluation.answerability import answerability_metrics
from training.evaluation.captions import caption_metrics
from training.evaluation.evaluators import (
    AnswerabilityEvaluator,
    CaptionEvaluator,
    Evaluator,
    VisDialEvaluator,
    VQAAccuracyEvaluator,
    evaluators_for,
)
from training.evaluation.visdial import ndcg_from_ranks, ranking_metrics, scores_to_ranks
from training.evaluation.vqa import accuracy_metrics, vqa_accuracy

__all__ = [
    "AnswerabilityEvaluator",
    "CaptionEvaluator",
    "Evaluator",
    "VQAAccuracyEvaluator",
    "VisDialEvaluator",
    "accuracy_metrics",
    "answerability_metrics",
    "caption_metrics",
    "evaluators_for",
    "ndcg_from_ranks",
    "ranking_metrics",
    "scores_to_ranks",
    "vqa_accuracy",
]

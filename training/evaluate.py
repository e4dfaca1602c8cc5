"""Score an EvalAI result file against a split's official annotations.

    python -m training.evaluate --dataset {vqa2,textvqa,vizwiz,coco,visdial} \\
        --data-dir DIR --split SPLIT --predictions FILE [--mode current|legacy] \\
        [--answerability FILE] [--meteor]

Only annotation files are read (no images). Splits use each dataset's official names:
``val2014``/``train2014`` for VQA v2 and COCO, ``val``/``train`` for TextVQA, VizWiz and
VisDial (test splits carry no answers and cannot be scored). Prints one JSON object:

* vqa2, textvqa, vizwiz: ``accuracy`` (and ``accuracy/<answer type>``,
  ``accuracy/qtype/<question type>`` where the annotations have types); for vizwiz with
  ``--answerability``: ``average_precision`` and ``f1`` of detecting unanswerable (x100);
* coco: ``bleu1`` … ``bleu4``, ``rouge_l``, ``cider`` (pycocoevalcap's scale), ``meteor``
  with ``--meteor`` (needs Java and the pycocoevalcap package);
* visdial: ``r@1``, ``r@5``, ``r@10``, ``mean_rank``, ``mrr`` over every round, ``ndcg``
  over the densely annotated rounds (val).

Exit status 0 on success, 1 with ``error: …`` on stderr for an invalid result file or
dataset, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.data import coco, textvqa, visdial, vizwiz, vqa2
from training.data.base import DatasetError
from training.evaluation import evalai
from training.evaluation.answerability import answerability_metrics
from training.evaluation.captions import caption_metrics
from training.evaluation.visdial import NDCGAccumulator, RankingAccumulator
from training.evaluation.vqa import MODES, accuracy_metrics

DATASETS = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")


def evaluate_file(
    dataset: str,
    data_dir: str | Path,
    split: str,
    predictions: str | Path,
    *,
    mode: str = "current",
    answerability: str | Path | None = None,
    meteor: bool = False,
) -> dict[str, float]:
    """Metrics of a result file (see the module docstring). Raises ``SubmissionError`` naming
    the file for an invalid result file and ``DatasetError`` for unreadable annotations."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {DATASETS}")
    if dataset == "vqa2":
        records = vqa2.load_ground_truth(data_dir, split)
        answers = _results(predictions, evalai.validate_vqa, [r["question_id"] for r in records])
        return accuracy_metrics(
            ((answers[r["question_id"]], r["answers"], r["answer_type"], r["question_type"])
             for r in records), dataset="vqa2", mode=mode)
    if dataset == "textvqa":
        records = textvqa.load_ground_truth(data_dir, split)
        answers = _results(predictions, evalai.validate_vqa, [r["question_id"] for r in records])
        return accuracy_metrics(((answers[r["question_id"]], r["answers"], "", "")
                                 for r in records), dataset="textvqa")
    if dataset == "vizwiz":
        records = vizwiz.load_ground_truth(data_dir, split)
        images = [r["image"] for r in records]
        if len(set(images)) != len(images):
            raise DatasetError(f"{data_dir}: VizWiz {split} names an image twice")
        answers = _results(predictions, evalai.validate_vizwiz, images)
        out = accuracy_metrics(((answers[r["image"]], r["answers"], r["answer_type"], "")
                                for r in records), dataset="vizwiz")
        if answerability is not None:
            probs = _results(answerability, evalai.validate_vizwiz_answerability, images)
            out.update(answerability_metrics([r["answerable"] for r in records],
                                             [probs[i] for i in images]))
        return out
    if dataset == "coco":
        references = coco.load_ground_truth(data_dir, split)
        captions = _results(predictions, evalai.validate_coco, list(references))
        return caption_metrics(references, captions, use_meteor=meteor)
    return _visdial(data_dir, split, predictions)


def _results(path: str | Path, validate: Any, *args: Any) -> Any:
    """``validate(read_results(path), *args)``; a SubmissionError names the file."""
    try:
        return validate(evalai.read_results(path), *args)
    except evalai.SubmissionError as exc:
        raise evalai.SubmissionError(f"{path}: {exc}") from None


def _visdial(data_dir: str | Path, split: str, predictions: str | Path) -> dict[str, float]:
    if split == "test":
        raise DatasetError("visdial test has no answers to score against")
    gt = visdial.load_ground_truth(data_dir, split)
    ranks = _results(predictions, evalai.validate_visdial,
                     evalai.visdial_expected_rounds(gt["dialogs"], split))
    ranking, ndcg = RankingAccumulator(), NDCGAccumulator()
    gt_ranks = [ranks[(d["image_id"], r + 1)][rd["gt_index"]]
                for d in gt["dialogs"] for r, rd in enumerate(d["dialog"])]
    ranking.update(torch.tensor(gt_ranks))
    out = ranking.compute()
    dense = [(ranks[(image_id, r + 1)], rel) for image_id, (r, rel) in gt["relevance"].items()]
    if dense:
        ndcg.update_ranks(torch.tensor([d[0] for d in dense]),
                          torch.tensor([d[1] for d in dense], dtype=torch.float64))
        out.update(ndcg.compute())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate",
                                     description="Score an EvalAI result file.")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the dataset's directory in its official layout")
    parser.add_argument("--split", required=True,
                        help="official split name (val2014 for VQA v2 and COCO; val for others)")
    parser.add_argument("--predictions", required=True, type=Path, help="the result file")
    parser.add_argument("--mode", choices=MODES, default="current",
                        help="VQA v2 accuracy: the official code since 2021 (current) or "
                             "before (legacy)")
    parser.add_argument("--answerability", type=Path,
                        help="VizWiz: a [{image, answerable}] file to score as well")
    parser.add_argument("--meteor", action="store_true",
                        help="COCO: also METEOR (needs Java and pycocoevalcap)")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate_file(args.dataset, args.data_dir, args.split, args.predictions,
                                mode=args.mode, answerability=args.answerability,
                                meteor=args.meteor)
    except (evalai.SubmissionError, DatasetError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(metrics, indent=1, sort_keys=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Streaming evaluators: ``reset() / process(batch, outputs) / evaluate() -> dict[str, float]``.

The trainer sees them only through a hook: it calls ``reset`` before an evaluation pass,
``process`` after every batch (on every rank), and ``evaluate`` once at the end (on every
rank; the result is the same everywhere). ``evaluate`` gathers across DDP ranks itself.

Memory is constant in the number of samples: VQA accuracy and VisDial metrics keep running
sums; captions and VizWiz answerability, whose metrics need the whole corpus (CIDEr's
document frequencies, average precision's ranking), spool their rows to a temporary file
while processing and read it back once in ``evaluate``.

Contract: every sample is processed exactly once across ranks (evaluate with
``training.data.samplers.ShardSampler``, which does not pad like ``DistributedSampler``).
Spooling evaluators also drop repeated ids, keeping the first.

Batch and output keys each evaluator reads:

* ``VQAAccuracyEvaluator``: batch ``answers`` (B lists of human answers; empty on test),
  ``answer_type``/``question_type`` (optional); outputs ``answer`` (B strings).
* ``CaptionEvaluator``: batch ``image_id``, ``references``; outputs ``caption`` (B strings).
* ``VisDialEvaluator``: batch ``gt_index`` (B, R), ``options_mask`` (B, R), optional
  ``relevance_round`` (B,) and ``gt_relevance`` (B, O); outputs ``scores`` (B, R, O).
* ``AnswerabilityEvaluator``: batch ``answerable`` (B,) 0/1 (-1 unknown); outputs
  ``answerable`` (B,) predicted probability that the question is answerable.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.dist import all_gather_object
from training.evaluation.answerability import answerability_metrics
from training.evaluation.captions import caption_metrics
from training.evaluation.visdial import NDCGAccumulator, RankingAccumulator, scores_to_ranks
from training.evaluation.vqa import ACCURACY_FUNCTIONS, MODES, AccuracyAccumulator


class Evaluator:
    """Base class: subclasses implement the three methods."""

    def reset(self) -> None:
        raise NotImplementedError

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return list(value)


class VQAAccuracyEvaluator(Evaluator):
    """Official VQA accuracy (``training.evaluation.vqa``) for vqa2, textvqa or vizwiz."""

    def __init__(self, dataset: str = "vqa2", *, mode: str = "current") -> None:
        if dataset not in ACCURACY_FUNCTIONS:
            raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(ACCURACY_FUNCTIONS)}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {MODES}")
        self.dataset, self.mode = dataset, mode
        self._fn = ACCURACY_FUNCTIONS[dataset]
        self.reset()

    def reset(self) -> None:
        self._acc = AccuracyAccumulator()

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        preds = outputs["answer"]
        answers = batch["answers"]
        if len(preds) != len(answers):
            raise ValueError(f"{len(preds)} predicted answers for a batch of {len(answers)}")
        atypes = batch.get("answer_type") or [""] * len(preds)
        qtypes = batch.get("question_type") or [""] * len(preds)
        for pred, gts, at, qt in zip(preds, answers, atypes, qtypes, strict=True):
            if gts:  # test splits have no answers: nothing to score
                self._acc.add(self._fn(pred, gts, mode=self.mode), at, qt)

    def evaluate(self) -> dict[str, float]:
        total = AccuracyAccumulator()
        for state in all_gather_object(self._acc.state()):
            total.merge(state)
        return total.result()


class _Spool:
    """Rows appended to a temporary JSON-lines file; read back, deduplicated by key."""

    def __init__(self, directory: str | Path | None) -> None:
        self.directory = directory
        self._file: Any = None

    def open(self) -> None:
        self.close()
        if self.directory is not None:
            Path(self.directory).mkdir(parents=True, exist_ok=True)
        self._file = tempfile.TemporaryFile(  # noqa: SIM115 (lives until reset/close)
            mode="w+b", dir=self.directory, prefix="pythia-eval-")

    def append(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, separators=(",", ":")).encode("utf-8") + b"\n")

    def gathered_rows(self, key: str) -> list[dict[str, Any]]:
        """All ranks' rows (rank order), the first row of each ``key`` value kept."""
        self._file.flush()
        self._file.seek(0)
        shards = all_gather_object(self._file.read())
        self._file.seek(0, os.SEEK_END)
        seen: set[Any] = set()
        rows = []
        for shard in shards:
            for line in shard.splitlines():
                row = json.loads(line)
                k = json.dumps(row[key])
                if k not in seen:
                    seen.add(k)
                    rows.append(row)
        return rows

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class CaptionEvaluator(Evaluator):
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR when available) over the whole split."""

    def __init__(self, *, use_meteor: bool | None = False,
                 spool_dir: str | Path | None = None) -> None:
        self.use_meteor = use_meteor
        self._spool = _Spool(spool_dir)
        self.reset()

    def reset(self) -> None:
        self._spool.open()

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        ids = _as_list(batch["image_id"])
        captions, refs = outputs["caption"], batch["references"]
        if not len(ids) == len(captions) == len(refs):
            raise ValueError("image_id, references and predicted captions differ in length")
        for image_id, caption, references in zip(ids, captions, refs, strict=True):
            self._spool.append({"id": image_id, "caption": caption,
                                "references": list(references)})

    def evaluate(self) -> dict[str, float]:
        rows = self._spool.gathered_rows("id")
        if not rows:
            return {}
        references = {i: r["references"] for i, r in enumerate(rows)}
        predictions = {i: r["caption"] for i, r in enumerate(rows)}
        return caption_metrics(references, predictions, use_meteor=self.use_meteor)


class VisDialEvaluator(Evaluator):
    """R@1/5/10, mean rank and MRR over every round with a known answer; NDCG over the
    rounds with dense relevance."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._ranking = RankingAccumulator()
        self._ndcg = NDCGAccumulator()

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        scores = outputs["scores"].detach().float().cpu()            # (B, R, O)
        gt = batch["gt_index"].cpu()                                   # (B, R), -1 unknown
        ranks = scores_to_ranks(scores)                                # (B, R, O), 1 = best
        known = (gt >= 0) & batch["options_mask"].cpu().bool()
        if known.any():
            gt_ranks = ranks.gather(-1, gt.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, R)
            self._ranking.update(gt_ranks[known])
        if "relevance_round" in batch:
            rr = _as_list(batch["relevance_round"])
            rows = [b for b, r in enumerate(rr) if r >= 0]
            if rows:
                idx = torch.tensor(rows)
                rounds = torch.tensor([rr[b] for b in rows])
                self._ndcg.update_scores(scores[idx, rounds],                  # (b, O)
                                         batch["gt_relevance"].cpu().float()[idx])

    def evaluate(self) -> dict[str, float]:
        ranking, ndcg = RankingAccumulator(), NDCGAccumulator()
        for r_state, n_state in all_gather_object((self._ranking.state(), self._ndcg.state())):
            ranking.merge(r_state)
            ndcg.merge(n_state)
        return {**ranking.compute(), **ndcg.compute()}  # each {} when it saw nothing


class AnswerabilityEvaluator(Evaluator):
    """VizWiz answerability: average precision and F1 of detecting unanswerable, x100."""

    def __init__(self, *, spool_dir: str | Path | None = None) -> None:
        self._spool = _Spool(spool_dir)
        self.reset()

    def reset(self) -> None:
        self._spool.open()

    def process(self, batch: dict[str, Any], outputs: dict[str, Any]) -> None:
        if "answerable" not in outputs:
            return  # a model without an answerability head: nothing to score
        ids = _as_list(batch.get("image_name", batch.get("question_id")))
        labels = _as_list(batch["answerable"])
        probs = _as_list(outputs["answerable"])
        for i, label, p in zip(ids, labels, probs, strict=True):
            if label in (0, 1):
                self._spool.append({"id": i, "label": int(label), "p": float(p)})

    def evaluate(self) -> dict[str, float]:
        rows = self._spool.gathered_rows("id")
        if not rows:
            return {}
        return answerability_metrics([r["label"] for r in rows], [r["p"] for r in rows])


def evaluators_for(dataset: str, *, mode: str = "current") -> Sequence[Evaluator]:
    """The evaluators the trainer runs for a dataset's validation split."""
    if dataset in ("vqa2", "textvqa"):
        return [VQAAccuracyEvaluator(dataset, mode=mode)]
    if dataset == "vizwiz":
        return [VQAAccuracyEvaluator("vizwiz"), AnswerabilityEvaluator()]
    if dataset == "coco":
        return [CaptionEvaluator()]
    if dataset == "visdial":
        return [VisDialEvaluator()]
    raise ValueError(f"no evaluators for dataset {dataset!r}")

"""Streaming evaluators: one pass equals the metric functions, chunking does not matter,
and a real 2-process gloo group gathers to the single-process result."""

import json
import os
import random
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.evaluation.answerability import answerability_metrics
from training.evaluation.captions import caption_metrics
from training.evaluation.evaluators import (
    AnswerabilityEvaluator,
    CaptionEvaluator,
    VisDialEvaluator,
    VQAAccuracyEvaluator,
    evaluators_for,
)
from training.evaluation.vqa import accuracy_metrics


def _vqa_rows(n=120, seed=0):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        answers = [rng.choice(["red", "Red", "blue", "2", "two"]) for _ in range(10)]
        rows.append({"question_id": i, "answers": answers, "answer_type": rng.choice("ab"),
                     "question_type": rng.choice("pq"),
                     "pred": rng.choice(["red", "blue", "2", "green"])})
    return rows


def _vqa_batches(rows, size):
    for k in range(0, len(rows), size):
        chunk = rows[k:k + size]
        yield ({"answers": [r["answers"] for r in chunk],
                "answer_type": [r["answer_type"] for r in chunk],
                "question_type": [r["question_type"] for r in chunk]},
               {"answer": [r["pred"] for r in chunk]})


def test_vqa_evaluator_matches_the_metric_and_ignores_chunking_and_test_rows():
    rows = _vqa_rows()
    expected = accuracy_metrics((r["pred"], r["answers"], r["answer_type"], r["question_type"])
                                for r in rows)
    for size in (1, 7, 120):
        ev = VQAAccuracyEvaluator("vqa2")
        for batch, out in _vqa_batches(rows, size):
            ev.process(batch, out)
        ev.process({"answers": [[]]}, {"answer": ["x"]})  # a test row: no answers, skipped
        assert ev.evaluate() == expected
        ev.reset()
        assert ev.evaluate() == {}
    with pytest.raises(ValueError, match="2 predicted answers for a batch of 1"):
        VQAAccuracyEvaluator().process({"answers": [["a"]]}, {"answer": ["a", "b"]})


def _caption_data():
    rng = random.Random(3)
    words = ["a", "red", "blue", "circle", "square", "on", "the", "left", "of", "two",
             "small", "large"]
    refs = {i: [" ".join(rng.choices(words, k=rng.randint(4, 9))) for _ in range(5)]
            for i in range(40)}
    preds = {i: " ".join(rng.choices(words, k=rng.randint(3, 9))) for i in refs}
    return refs, preds


def test_caption_evaluator_spools_and_deduplicates(tmp_path):
    refs, preds = _caption_data()
    ev = CaptionEvaluator(spool_dir=tmp_path)
    ids = list(refs)
    for k in range(0, len(ids), 6):
        chunk = ids[k:k + 6]
        ev.process({"image_id": torch.tensor(chunk), "references": [refs[i] for i in chunk]},
                   {"caption": [preds[i] for i in chunk]})
    # a repeated image (e.g. from a padded sampler) is counted once
    ev.process({"image_id": [ids[0]], "references": [refs[ids[0]]]}, {"caption": ["junk"]})
    got = ev.evaluate()
    assert got == pytest.approx(caption_metrics(refs, preds, use_meteor=False))
    assert not list(tmp_path.iterdir())  # the spool is an unlinked temporary file


def _visdial_batch(b, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, 10, 100, generator=g)
    gt = torch.randint(0, 100, (b, 10), generator=g)
    rel = (torch.rand(b, 100, generator=g) > 0.9).float() * 0.5
    rel[torch.arange(b), gt[:, 3]] = 1.0
    return ({"gt_index": gt, "options_mask": torch.ones(b, 10, dtype=torch.bool),
             "relevance_round": torch.full((b,), 3), "gt_relevance": rel},
            {"scores": scores})


def test_visdial_evaluator_perfect_scores_and_chunk_invariance():
    batch, out = _visdial_batch(6, 0)
    perfect = torch.zeros(6, 10, 100)
    perfect.scatter_(2, batch["gt_index"].unsqueeze(-1), 10.0)
    perfect[:, 3] += batch["gt_relevance"]
    ev = VisDialEvaluator()
    ev.process(batch, {"scores": perfect})
    m = ev.evaluate()
    assert m["r@1"] == 1.0 and m["mrr"] == 1.0 and m["ndcg"] == pytest.approx(1.0)
    whole, parts = VisDialEvaluator(), VisDialEvaluator()
    whole.process(batch, out)
    for k in range(0, 6, 2):
        parts.process({key: v[k:k + 2] for key, v in batch.items()},
                      {"scores": out["scores"][k:k + 2]})
    assert parts.evaluate() == pytest.approx(whole.evaluate())
    # rounds without options (VisDial test) do not count
    batch["options_mask"][:, 5:] = False
    masked = VisDialEvaluator()
    masked.process(batch, out)
    assert masked._ranking.state()["count"] == 6 * 5


def test_answerability_evaluator():
    labels = [1, 0, 1, 1, 0, 0, 1, -1]
    probs = [0.9, 0.2, 0.6, 0.4, 0.7, 0.1, 0.8, 0.5]
    ev = AnswerabilityEvaluator()
    ev.process({"image_name": [f"VizWiz_val_{i:08d}.jpg" for i in range(8)],
                "answerable": torch.tensor(labels)}, {"answerable": torch.tensor(probs)})
    ev.process({"image_name": ["x"], "answerable": [1]}, {})  # no answerability head: skipped
    assert ev.evaluate() == pytest.approx(answerability_metrics(labels[:7], probs[:7]))


def test_evaluators_for_each_dataset():
    kinds = {d: [type(e).__name__ for e in evaluators_for(d)]
             for d in ("vqa2", "textvqa", "vizwiz", "coco", "visdial")}
    assert kinds["vizwiz"] == ["VQAAccuracyEvaluator", "AnswerabilityEvaluator"]
    assert kinds["visdial"] == ["VisDialEvaluator"]
    with pytest.raises(ValueError):
        evaluators_for("mnist")


# -- a real process group ---------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = _vqa_rows()[rank::world]
        vqa = VQAAccuracyEvaluator("vqa2")
        for batch, out in _vqa_batches(rows, 5):
            vqa.process(batch, out)
        refs, preds = _caption_data()
        cap = CaptionEvaluator()
        ids = list(refs)[rank::world]
        cap.process({"image_id": ids, "references": [refs[i] for i in ids]},
                    {"caption": [preds[i] for i in ids]})
        vd = VisDialEvaluator()
        batch, out = _visdial_batch(6, 0)
        vd.process({k: v[rank::world] for k, v in batch.items()},
                   {"scores": out["scores"][rank::world]})
        result = {"vqa": vqa.evaluate(), "cap": cap.evaluate(), "vd": vd.evaluate()}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_ranks_gather_to_the_single_process_result(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2,
                       start_method="fork")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results[0] == results[1]  # every rank gets the same numbers
    rows = _vqa_rows()
    assert results[0]["vqa"] == accuracy_metrics(
        (r["pred"], r["answers"], r["answer_type"], r["question_type"]) for r in rows)
    refs, preds = _caption_data()
    assert results[0]["cap"] == pytest.approx(caption_metrics(refs, preds, use_meteor=False))
    single = VisDialEvaluator()
    single.process(*_visdial_batch(6, 0))
    assert results[0]["vd"] == pytest.approx(single.evaluate())

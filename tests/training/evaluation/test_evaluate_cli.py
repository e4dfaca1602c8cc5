"""``python -m training.evaluate`` on generated ShapesWorld files: perfect, partial, empty
and corrupted predictions, for all five datasets."""

import json
import subprocess
import sys
from collections import Counter

import pytest

from models.processors.answers import normalize_answer
from tests.training.evaluation.test_vqa_metrics import _reference
from training.data import coco, textvqa, visdial, vizwiz, vqa2
from training.data.shapes import generate
from training.evaluate import main
from training.evaluation import evalai


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    generate(root, seed=1, train_images=8, val_images=10, test_images=4, image_size=64,
             workers=1)
    return root


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if code == 0 else None), captured.err


def _majority(answers):
    return Counter(normalize_answer(a) for a in answers).most_common(1)[0][0]


def _literal_accuracy(pred, answers):
    """Both sides normalized, leave-one-out (equal to the official code for normalized
    predictions in either mode)."""
    gts = [normalize_answer(a) for a in answers]
    p = normalize_answer(pred)
    return sum(min(1, sum(o == p for o in gts[:i] + gts[i + 1:]) / 3)
               for i in range(len(gts))) / len(gts)


def test_vqa2_majority_answers_score_what_the_formula_says(world, tmp_path, capsys):
    records = vqa2.load_ground_truth(world / "vqa2", "val2014")
    preds = evalai.vqa_results([r["question_id"] for r in records],
                               [_majority(r["answers"]) for r in records])
    f = evalai.write_results(tmp_path / "vqa.json", preds)
    code, m, _ = _run(capsys, "--dataset", "vqa2", "--data-dir", world / "vqa2", "--split",
                      "val2014", "--predictions", f)
    assert code == 0
    expected = round(100 * sum(_literal_accuracy(p["answer"], r["answers"])
                               for p, r in zip(preds, records)) / len(records), 2)
    assert m["accuracy"] == expected and 60 < expected <= 100
    assert {"accuracy/yes/no", "accuracy/number", "accuracy/other"} <= set(m)
    # legacy mode: the pre-2021 loop, transcribed literally in the metric tests
    code, legacy, _ = _run(capsys, "--dataset", "vqa2", "--data-dir", world / "vqa2",
                           "--split", "val2014", "--predictions", f, "--mode", "legacy")
    assert legacy["accuracy"] == round(100 * sum(
        _reference(p["answer"], r["answers"], "legacy") for p, r in zip(preds, records))
        / len(records), 2)
    # all wrong answers score 0
    wrong = [{"question_id": r["question_id"], "answer": "zzz"} for r in records]
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    code, m, _ = _run(capsys, "--dataset", "vqa2", "--data-dir", world / "vqa2", "--split",
                      "val2014", "--predictions", tmp_path / "wrong.json")
    assert m["accuracy"] == 0.0


def test_vqa2_invalid_files_exit_1_naming_the_problem(world, tmp_path, capsys):
    records = vqa2.load_ground_truth(world / "vqa2", "val2014")
    base = ["--dataset", "vqa2", "--data-dir", world / "vqa2", "--split", "val2014",
            "--predictions"]
    (tmp_path / "empty.json").write_text("[]")
    code, _, err = _run(capsys, *base, tmp_path / "empty.json")
    assert code == 1 and f"{len(records)} questions of the split have no prediction" in err
    assert "empty.json" in err
    (tmp_path / "corrupt.json").write_text('[{"question_id": 1, "answ')
    code, _, err = _run(capsys, *base, tmp_path / "corrupt.json")
    assert code == 1 and "corrupt.json: not valid JSON" in err
    dup = [{"question_id": r["question_id"], "answer": "x"} for r in records]
    dup.append(dict(dup[3]))
    (tmp_path / "dup.json").write_text(json.dumps(dup))
    code, _, err = _run(capsys, *base, tmp_path / "dup.json")
    assert code == 1 and f"question {records[3]['question_id']} is predicted more than once" \
        in err
    extra = [{"question_id": r["question_id"], "answer": "x"} for r in records]
    extra.append({"question_id": 999999999, "answer": "x"})
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    code, _, err = _run(capsys, *base, tmp_path / "extra.json")
    assert code == 1 and "question 999999999 is not in the split" in err
    (tmp_path / "badtype.json").write_text(json.dumps([{"question_id": "7", "answer": "x"}]))
    code, _, err = _run(capsys, *base, tmp_path / "badtype.json")
    assert code == 1 and "field 'question_id' must be int" in err
    code, _, err = _run(capsys, "--dataset", "vqa2", "--data-dir", world / "vqa2", "--split",
                        "val2099", "--predictions", tmp_path / "empty.json")
    assert code == 1 and "unknown split 'val2099'" in err


def test_textvqa_and_vizwiz(world, tmp_path, capsys):
    records = textvqa.load_ground_truth(world / "textvqa", "val")
    preds = evalai.vqa_results([r["question_id"] for r in records],
                               [_majority(r["answers"]) for r in records])
    f = evalai.write_results(tmp_path / "t.json", preds)
    code, m, _ = _run(capsys, "--dataset", "textvqa", "--data-dir", world / "textvqa",
                      "--split", "val", "--predictions", f)
    expected = round(100 * sum(_literal_accuracy(p["answer"], r["answers"])
                               for p, r in zip(preds, records)) / len(records), 2)
    assert code == 0 and m == {"accuracy": expected}

    vw = vizwiz.load_ground_truth(world / "vizwiz", "val")
    f = evalai.write_results(tmp_path / "v.json", evalai.vizwiz_results(
        [r["image"] for r in vw], [_majority(r["answers"]) for r in vw]))
    perfect = evalai.write_results(tmp_path / "a.json", evalai.vizwiz_answerability_results(
        [r["image"] for r in vw], [float(r["answerable"]) for r in vw]))
    code, m, _ = _run(capsys, "--dataset", "vizwiz", "--data-dir", world / "vizwiz",
                      "--split", "val", "--predictions", f, "--answerability", perfect)
    assert code == 0 and m["average_precision"] == 100.0 and m["f1"] == 100.0
    assert m["accuracy"] > 50 and "accuracy/unanswerable" in m
    bad = [{"image": r["image"].replace("_000", "_0"), "answer": "x"} for r in vw]
    (tmp_path / "names.json").write_text(json.dumps(bad))
    code, _, err = _run(capsys, "--dataset", "vizwiz", "--data-dir", world / "vizwiz",
                        "--split", "val", "--predictions", tmp_path / "names.json")
    assert code == 1 and "is not a VizWiz image name" in err and "8 digits" in err


def test_coco_reference_as_prediction(world, tmp_path, capsys):
    refs = coco.load_ground_truth(world / "coco", "val2014")
    f = evalai.write_results(tmp_path / "c.json", evalai.coco_results(
        list(refs), [r[0] for r in refs.values()]))
    code, m, _ = _run(capsys, "--dataset", "coco", "--data-dir", world / "coco", "--split",
                      "val2014", "--predictions", f)
    assert code == 0
    assert m["bleu1"] == pytest.approx(1.0) and m["bleu4"] == pytest.approx(1.0)
    assert m["rouge_l"] == pytest.approx(1.0) and m["cider"] > 1.0
    missing = evalai.coco_results(list(refs)[1:], [r[0] for r in list(refs.values())[1:]])
    f2 = evalai.write_results(tmp_path / "c2.json", missing)
    code, _, err = _run(capsys, "--dataset", "coco", "--data-dir", world / "coco", "--split",
                        "val2014", "--predictions", f2)
    assert code == 1 and "1 images of the split have no prediction" in err


def test_visdial_perfect_and_reversed_rankings(world, tmp_path, capsys):
    gt = visdial.load_ground_truth(world / "visdial", "val")
    perfect, reverse = [], []
    for d in gt["dialogs"]:
        rel = gt["relevance"].get(d["image_id"])
        for r, rd in enumerate(d["dialog"]):
            # order options: gt first, then by dense relevance on the annotated round
            scores = [0.0] * 100
            if rel is not None and rel[0] == r:
                scores = list(rel[1])
            scores[rd["gt_index"]] = 2.0
            order = sorted(range(100), key=lambda o: -scores[o])
            ranks = [0] * 100
            for position, o in enumerate(order):
                ranks[o] = position + 1
            perfect.append({"image_id": d["image_id"], "round_id": r + 1, "ranks": ranks})
            reverse.append({"image_id": d["image_id"], "round_id": r + 1,
                            "ranks": [101 - x for x in ranks]})
    f = evalai.write_results(tmp_path / "p.json", perfect)
    code, m, _ = _run(capsys, "--dataset", "visdial", "--data-dir", world / "visdial",
                      "--split", "val", "--predictions", f)
    assert code == 0
    assert m["r@1"] == 1.0 and m["mrr"] == 1.0 and m["mean_rank"] == 1.0
    assert m["ndcg"] == pytest.approx(1.0)
    f = evalai.write_results(tmp_path / "r.json", reverse)
    code, m, _ = _run(capsys, "--dataset", "visdial", "--data-dir", world / "visdial",
                      "--split", "val", "--predictions", f)
    assert m["mean_rank"] == 100.0 and m["r@10"] == 0.0 and m["ndcg"] < 0.3
    broken = [dict(x) for x in perfect]
    broken[5]["ranks"] = [*broken[5]["ranks"][:-1], broken[5]["ranks"][0]]
    f = evalai.write_results(tmp_path / "b.json", broken)
    code, _, err = _run(capsys, "--dataset", "visdial", "--data-dir", world / "visdial",
                        "--split", "val", "--predictions", f)
    assert code == 1 and "result [5]" in err
    code, _, err = _run(capsys, "--dataset", "visdial", "--data-dir", world / "visdial",
                        "--split", "test", "--predictions", f)
    assert code == 1 and "test has no answers" in err


def test_visdial_test_split_expects_the_last_round_only(world):
    gt = visdial.load_ground_truth(world / "visdial", "test")
    expected = evalai.visdial_expected_rounds(gt["dialogs"], "test")
    assert len(expected) == len(gt["dialogs"])
    assert all(r == len(d["dialog"]) for (_, r), d in zip(expected, gt["dialogs"]))
    results = [{"image_id": i, "round_id": r, "ranks": list(range(1, 101))} for i, r in expected]
    assert len(evalai.validate_visdial(results, expected)) == len(expected)


def test_module_entry_point_runs_as_a_process(world, tmp_path):
    out = subprocess.run([sys.executable, "-m", "training.evaluate", "--dataset", "vqa2",
                          "--data-dir", str(world / "vqa2"), "--split", "val2014",
                          "--predictions", str(tmp_path / "none.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "none.json: file not found" in out.stderr

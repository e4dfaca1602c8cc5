"""VQA accuracy: every rule on worked examples, both official behaviours, properties."""

import random

import pytest

from training.evaluation.vqa import (
    AccuracyAccumulator,
    accuracy_metrics,
    textvqa_accuracy,
    vizwiz_accuracy,
    vqa_accuracy,
)


def _reference(prediction, answers, mode):
    """A literal transcription of the two official loops, for comparison."""
    from models.processors.answers import process_digit_article, process_punctuation

    if mode == "current":
        gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in answers]
        res = prediction.replace("\n", " ").replace("\t", " ").strip()
        if len(set(gts)) > 1:
            gts = [process_digit_article(process_punctuation(a)) for a in gts]
            res = process_digit_article(process_punctuation(res))
    else:
        res = prediction.replace("\n", " ").replace("\t", " ").strip()
        res = process_digit_article(process_punctuation(res))
        gts = list(answers)
        if len(set(gts)) > 1:
            gts = [process_punctuation(a) for a in gts]
    accs = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        accs.append(min(1, sum(1 for o in others if o == res) / 3))
    return sum(accs) / len(accs)


@pytest.mark.parametrize("c, expected", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0),
                                         (7, 1.0), (10, 1.0)])
def test_matching_count_gives_the_official_table(c, expected):
    answers = ["cat"] * c + ["dog"] * (10 - c)
    for mode in ("current", "legacy"):
        assert vqa_accuracy("cat", answers, mode=mode) == pytest.approx(expected)


def test_the_two_official_behaviours_differ_on_unanimous_answers():
    # all ten wrote "2": the current code compares raw strings, the legacy code normalizes
    # the prediction ("two" -> "2") first
    assert vqa_accuracy("two", ["2"] * 10) == 0.0
    assert vqa_accuracy("two", ["2"] * 10, mode="legacy") == 1.0
    # a normalized prediction scores the same under both
    assert vqa_accuracy("2", ["2"] * 10) == vqa_accuracy("2", ["2"] * 10, mode="legacy") == 1.0
    # when the annotators disagree both normalize
    answers = ["2"] * 9 + ["two apples"]
    assert vqa_accuracy("Two", answers) == vqa_accuracy("Two", answers, mode="legacy") == 1.0
    with pytest.raises(ValueError, match="unknown VQA accuracy mode"):
        vqa_accuracy("x", ["x"], mode="2019")


@pytest.mark.parametrize("prediction, answers, expected", [
    ("t shirt", ["t-shirt"] * 4 + ["shirt"] * 6, 1.0),          # punctuation -> space
    ("1000 tshirts", ["1,000 t-shirts"] * 3 + ["many"] * 7, 0.9),  # digit,digit: deleted
    ("yes", ["yes."] * 3 + ["no"] * 7, 0.9),                     # period stripped
    ("don't know", ["dont know"] * 4 + ["x"] * 6, 1.0),          # contractions
    ("0", ["none"] * 2 + ["zero"] * 2 + ["x"] * 6, 1.0),         # none, zero -> 0
    ("red ball", ["the red ball", "a red ball", "red ball"] + ["x"] * 7, 0.9),  # articles
    ("RED", ["red"] * 5 + ["blue"] * 5, 1.0),                    # lowercase
    ("3.5", ["3.5"] * 2 + ["3"] * 8, 0.6),                       # period before a digit kept
])
def test_normalization_rules_in_the_current_mode(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_legacy_gt_gets_punctuation_only():
    # legacy normalizes GT with processPunctuation only: "Two" stays capitalized on the GT
    # side and does not match the normalized prediction "2"
    answers = ["Two"] * 5 + ["three"] * 5
    assert vqa_accuracy("2", answers, mode="legacy") == 0.0
    assert vqa_accuracy("2", answers, mode="current") == 1.0


def test_textvqa_and_vizwiz_rules():
    assert textvqa_accuracy("STOP", ["stop"] * 10) == 1.0    # both sides always normalized
    assert vqa_accuracy("STOP", ["stop"] * 10) == 0.0         # VQA v2 current: raw compare
    assert vizwiz_accuracy("Unanswerable.", ["unanswerable"] * 10) == 1.0


def test_randomized_against_a_literal_transcription_and_order_invariance():
    rng = random.Random(0)
    pool = ["2", "two", "Two", "red", "Red.", "the cat", "cat", "t-shirt", "t shirt", "yes",
            "yes!", "1,000", "1000", "none", "0", "dont", "don't", "a b", " x\t", "x"]
    for _ in range(2000):
        answers = [rng.choice(pool) for _ in range(10)]
        if rng.random() < 0.2:
            answers = [answers[0]] * 10
        pred = rng.choice(pool)
        for mode in ("current", "legacy"):
            expected = _reference(pred, answers, mode)
            got = vqa_accuracy(pred, answers, mode=mode)
            assert got == pytest.approx(expected, abs=1e-12), (pred, answers, mode)
            shuffled = answers[:]
            rng.shuffle(shuffled)
            assert vqa_accuracy(pred, shuffled, mode=mode) == pytest.approx(got, abs=1e-12)


def test_dataset_accuracy_rounding_and_types():
    rows = [("yes", ["yes"] * 10, "yes/no", "is the"),
            ("no", ["yes"] * 10, "yes/no", "is the"),
            ("2", ["2"] * 2 + ["3"] * 8, "number", "how many"),
            ("red", ["red"] * 10, "other", "what color is the")]
    m = accuracy_metrics(rows)
    assert m["accuracy"] == round(100 * (1 + 0 + 0.6 + 1) / 4, 2) == 65.0
    assert m["accuracy/yes/no"] == 50.0 and m["accuracy/number"] == 60.0
    assert m["accuracy/qtype/how many"] == 60.0
    one_third = accuracy_metrics([("a", ["a"] * 10, "", ""), ("b", ["a"] * 10, "", ""),
                                  ("c", ["a"] * 10, "", "")])
    assert one_third == {"accuracy": 33.33}


def test_accumulator_merge_equals_one_pass():
    rng = random.Random(1)
    rows = [(rng.choice("abc"), [rng.choice("abc") for _ in range(10)], rng.choice("xy"),
             rng.choice("pq")) for _ in range(300)]
    whole = accuracy_metrics(rows)
    a, b = AccuracyAccumulator(), AccuracyAccumulator()
    for i, (p, gts, at, qt) in enumerate(rows):
        (a if i % 2 else b).add(vqa_accuracy(p, gts), at, qt)
    a.merge(b.state())
    assert a.result() == whole

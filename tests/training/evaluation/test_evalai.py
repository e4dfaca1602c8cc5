import json

import pytest

from training.evaluation import evalai
from training.evaluation.evalai import SubmissionError


def test_writers_normalize_and_write_atomically(tmp_path):
    results = evalai.vqa_results([3, 1], ["Two dogs.", "the T-shirt"])
    assert results == [{"question_id": 3, "answer": "2 dogs"},
                       {"question_id": 1, "answer": "t shirt"}]
    path = evalai.write_results(tmp_path / "sub" / "r.json", results)
    assert json.loads(path.read_text()) == results
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary left
    assert evalai.vizwiz_results(["VizWiz_val_00000001.jpg"], ["Unanswerable."]) == [
        {"image": "VizWiz_val_00000001.jpg", "answer": "unanswerable"}]
    assert evalai.coco_results([5], [" a cat. "]) == [{"image_id": 5, "caption": "a cat."}]
    with pytest.raises(ValueError):
        evalai.vqa_results([1, 2], ["only one"])


def test_validate_vqa_names_missing_repeated_unknown_and_malformed():
    ok = [{"question_id": 1, "answer": "a"}, {"question_id": 2, "answer": "b"}]
    assert evalai.validate_vqa(ok, [1, 2]) == {1: "a", 2: "b"}
    with pytest.raises(SubmissionError, match=r"1 questions of the split have no prediction "
                                              r"\(first: 3\)"):
        evalai.validate_vqa(ok, [1, 2, 3])
    with pytest.raises(SubmissionError, match=r"result \[2\]: question 1 is predicted more"):
        evalai.validate_vqa([*ok, {"question_id": 1, "answer": "c"}], [1, 2])
    with pytest.raises(SubmissionError, match=r"result \[1\]: question 2 is not in the split"):
        evalai.validate_vqa(ok, [1])
    with pytest.raises(SubmissionError, match=r"result \[0\]: missing field 'answer'"):
        evalai.validate_vqa([{"question_id": 1}], [1])
    with pytest.raises(SubmissionError, match=r"field 'question_id' must be int, got True"):
        evalai.validate_vqa([{"question_id": True, "answer": "x"}], [1])
    with pytest.raises(SubmissionError, match="expected an object"):
        evalai.validate_vqa([["question_id", 1]], [1])


def test_validate_vizwiz_names_and_answerability_range():
    images = ["VizWiz_test_00000000.jpg", "VizWiz_test_00000001.jpg"]
    res = [{"image": i, "answer": "x"} for i in images]
    assert evalai.validate_vizwiz(res, images) == {i: "x" for i in images}
    with pytest.raises(SubmissionError, match="8 digits"):
        evalai.validate_vizwiz([{"image": "VizWiz_test_000000000000.jpg", "answer": "x"}],
                               images)
    probs = [{"image": images[0], "answerable": 0.3}, {"image": images[1], "answerable": 1}]
    assert evalai.validate_vizwiz_answerability(probs, images) == {images[0]: 0.3,
                                                                   images[1]: 1.0}
    probs[0]["answerable"] = 1.5
    with pytest.raises(SubmissionError, match=r"'answerable' must be in \[0, 1\]"):
        evalai.validate_vizwiz_answerability(probs, images)


def test_validate_visdial_ranks_and_rounds():
    dialogs = [{"image_id": 7, "dialog": [{}] * 10}, {"image_id": 8, "dialog": [{}] * 3}]
    assert evalai.visdial_expected_rounds(dialogs, "test") == [(7, 10), (8, 3)]
    assert len(evalai.visdial_expected_rounds(dialogs, "val")) == 13
    perm = list(range(1, 101))
    good = [{"image_id": 7, "round_id": 10, "ranks": perm}, {"image_id": 8, "round_id": 3,
                                                             "ranks": perm[::-1]}]
    assert evalai.validate_visdial(good, [(7, 10), (8, 3)])[(8, 3)][0] == 100
    bad = [dict(good[0], ranks=[*perm[:-1], 1]), good[1]]
    with pytest.raises(SubmissionError, match=r"result \[0\] \(image 7, round 10\)"):
        evalai.validate_visdial(bad, [(7, 10), (8, 3)])
    with pytest.raises(SubmissionError, match=r"round \(8, 2\) is not in the split"):
        evalai.validate_visdial([good[0], dict(good[1], round_id=2)], [(7, 10), (8, 3)])


def test_read_results_errors(tmp_path):
    with pytest.raises(SubmissionError, match="file not found"):
        evalai.read_results(tmp_path / "none.json")
    (tmp_path / "obj.json").write_text('{"question_id": 1}')
    with pytest.raises(SubmissionError, match="top level must be a list"):
        evalai.read_results(tmp_path / "obj.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe[")
    with pytest.raises(SubmissionError, match="not valid JSON"):
        evalai.read_results(tmp_path / "bin.json")

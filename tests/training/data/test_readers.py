"""Readers on hand-written minimal official files: fields, values, shapes and the errors
that name the file, the record and the field."""

import json
from pathlib import Path

import pytest
import torch

from tests.training.data.minimal import write_all
from training.config import load_config
from training.data import (
    COCOCaptionsDataset,
    DatasetError,
    TextVQADataset,
    VisDialDataset,
    VisualSource,
    VizWizDataset,
    VQA2Dataset,
    build_dataset,
    build_processors,
    collate,
)


@pytest.fixture()
def world(tmp_path):
    dirs = write_all(tmp_path)
    overrides = [f"datasets.{k}.data_dir={v}" for k, v in dirs.items()]
    cfg = load_config(None, [*overrides, "model.image_size=32"])
    return cfg, dirs


def test_vqa2_fields_targets_and_test_split(world):
    cfg, _ = world
    procs = build_processors(cfg, "vqa2")
    assert procs["answer_space"].answers == ["<unk>", "red", "yes"]
    train = build_dataset(cfg, "vqa2", "train", procs)
    assert len(train) == 4
    s = train[0]
    assert s["question_id"] == 10 and s["image_id"] == 1
    assert s["question_type"] == "what color is the" and s["answer_type"] == "other"
    assert s["image"].shape == (3, 32, 32)
    assert s["question_ids"].shape == (14,) and s["question_length"] == 5
    space = procs["answer_space"]
    # 7 x "red" + 2 x "Red." normalize to 9 matches -> 1.0; "orange" is outside the space
    assert s["targets"][space.word2idx("red")] == pytest.approx(1.0)
    assert s["targets"].sum() == pytest.approx(1.0)
    test = build_dataset(cfg, "vqa2", "test", procs)
    assert "targets" not in test[0] and test[0]["answers"] == []


def test_textvqa_ocr_fields_and_copy_targets(world):
    cfg, _ = world
    procs = build_processors(cfg, "textvqa")
    ds = build_dataset(cfg, "textvqa", "val", procs)
    s = ds[0]
    assert s["image_id"] == "0123456789abcdef"
    assert s["ocr_tokens"] == ["zorblat", "exit"]
    assert s["ocr_boxes"][0].tolist() == pytest.approx([0.1, 0.2, 0.6, 0.4])
    n_space = len(procs["answer_space"])
    assert s["targets"].shape == (n_space + 50,)
    assert s["targets"][n_space] == pytest.approx(1.0)  # copying OCR token 0 is right
    assert s["targets"][n_space + 1] == 0.0
    test = build_dataset(cfg, "textvqa", "test", procs)
    assert test[0]["answers"] == [] and "targets" not in test[0]


def test_vizwiz_answerability_and_names(world):
    cfg, _ = world
    procs = build_processors(cfg, "vizwiz")
    ds = build_dataset(cfg, "vizwiz", "val", procs)
    assert [ds[i]["answerable"] for i in range(2)] == [1, 0]
    assert ds[1]["image_name"] == "VizWiz_val_00000001.jpg"
    assert ds[1]["answer_type"] == "unanswerable"
    test = build_dataset(cfg, "vizwiz", "test", procs)
    assert test[0]["answerable"] == -1


def test_coco_per_caption_on_train_per_image_on_val(world):
    cfg, _ = world
    procs = build_processors(cfg, "coco")
    train = build_dataset(cfg, "coco", "train", procs)
    val = build_dataset(cfg, "coco", "val", procs)
    assert len(train) == 10 and len(val) == 1
    s = val[0]
    assert s["image_id"] == 42 and len(s["references"]) == 5
    vocab = procs["caption_vocab"]
    assert s["caption_ids"][0] == 2  # <s>
    assert vocab.decode(s["caption_ids"]) == "a red ball number 0"
    assert s["caption_length"] == 7
    with pytest.raises(DatasetError, match="unknown split 'test'; known splits: train, val"):
        build_dataset(cfg, "coco", "test", procs)


def test_visdial_rounds_options_history_and_dense(world):
    cfg, _ = world
    procs = build_processors(cfg, "visdial")
    vocab = procs["vocab"]
    val = build_dataset(cfg, "visdial", "val", procs)
    s = val[0]
    assert s["options_ids"].shape == (10, 100, 20) and s["options_mask"].all()
    assert s["gt_index"].tolist() == list(range(10))
    for r in range(10):  # the gt option is the answer
        assert torch.equal(s["options_ids"][r, s["gt_index"][r]], s["answer_ids"][r])
    assert vocab.decode(s["history_ids"][0]) == "a red ball on grass"
    assert vocab.decode(s["history_ids"][1]) == "is it red yes"  # round 1's Q and A
    assert s["relevance_round"] == 1 and s["gt_relevance"][:2].tolist() == [1.0, 0.5]
    assert val[1]["relevance_round"] == -1
    train = build_dataset(cfg, "visdial", "train", procs)  # the train dense sample
    assert train[1]["relevance_round"] == 2
    assert train[1]["gt_relevance"][1:5].tolist() == [0.0, 1.0, 0.5, 0.0]
    assert train[0]["relevance_round"] == -1 and not train[0]["gt_relevance"].any()
    test = build_dataset(cfg, "visdial", "test", procs)
    t = test[0]
    assert t["rounds"] == 3
    assert t["options_mask"].tolist() == [False, False, True] + [False] * 7
    assert t["gt_index"].tolist() == [-1] * 10 and t["answer_length"][2] == 0
    assert t["round_mask"].tolist() == [True] * 3 + [False] * 7
    batch = collate([test[0], test[1]])
    assert batch["options_ids"].shape == (2, 10, 100, 20)
    assert batch["rounds"].tolist() == [3, 1]


# -- errors: file, record and field named -----------------------------------------------
def _edit(path: Path, fn):
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _vqa2(cfg, dirs, split="train"):
    procs = {"vocab": build_processors(cfg, "vqa2")["vocab"]}
    return VQA2Dataset(data_dir=dirs["vqa2"], split=split, visual=VisualSource(),
                       vocab=procs["vocab"])


def test_error_missing_field_names_file_record_and_field(world):
    cfg, dirs = world
    vocab = build_processors(cfg, "vqa2")["vocab"]
    qfile = dirs["vqa2"] / "v2_OpenEnded_mscoco_train2014_questions.json"
    _edit(qfile, lambda d: d["questions"][1].pop("image_id"))
    with pytest.raises(DatasetError) as info:
        VQA2Dataset(data_dir=dirs["vqa2"], split="train", visual=VisualSource(), vocab=vocab)
    msg = str(info.value)
    assert str(qfile) in msg and "question 11" in msg and "missing field 'image_id'" in msg


def test_error_wrong_type_malformed_json_and_unknown_split(world):
    cfg, dirs = world
    afile = dirs["vqa2"] / "v2_mscoco_val2014_annotations.json"
    _edit(afile, lambda d: d["annotations"][0].__setitem__("answers", "red"))
    with pytest.raises(DatasetError, match=r"annotation of question 30: field 'answers' must "
                                           r"be list, got str"):
        _vqa2(cfg, dirs, "val")
    afile.write_text('{"annotations": [')
    with pytest.raises(DatasetError, match=r"v2_mscoco_val2014_annotations.json: not valid JSON"):
        _vqa2(cfg, dirs, "val")
    with pytest.raises(DatasetError, match=r"vqa2: unknown split 'dev'; known splits: test, "
                                           r"test-dev, train, val"):
        _vqa2(cfg, dirs, "dev")


def test_error_missing_image_names_the_record_and_the_file(world):
    cfg, dirs = world
    (dirs["vqa2"] / "val2014" / "COCO_val2014_000000000003.jpg").unlink()
    with pytest.raises(DatasetError, match=r"question 30: image file not found: .*"
                                           r"COCO_val2014_000000000003.jpg"):
        _vqa2(cfg, dirs, "val")


def test_error_missing_annotation_file_or_annotation(world):
    cfg, dirs = world
    afile = dirs["vqa2"] / "v2_mscoco_val2014_annotations.json"
    _edit(afile, lambda d: d["annotations"].pop())
    with pytest.raises(DatasetError, match=r"no annotation for question 31"):
        _vqa2(cfg, dirs, "val")
    afile.unlink()
    with pytest.raises(DatasetError, match=r"v2_mscoco_val2014_annotations.json: file not found"):
        _vqa2(cfg, dirs, "val")


def test_textvqa_errors(world):
    cfg, dirs = world
    procs = build_processors(cfg, "textvqa")
    ocr_file = dirs["textvqa"] / "TextVQA_Rosetta_OCR_v0.2_val.json"
    _edit(ocr_file, lambda d: d["data"][0]["ocr_info"][1]["bounding_box"].pop("width"))
    with pytest.raises(DatasetError, match=r"OCR of image 0123456789abcdef: ocr_info\[1\]"
                                           r".bounding_box: missing field 'width'"):
        TextVQADataset(data_dir=dirs["textvqa"], split="val", visual=VisualSource(),
                       vocab=procs["vocab"])
    _edit(ocr_file, lambda d: d.__setitem__("data", []))
    with pytest.raises(DatasetError, match=r"no OCR entry for image 0123456789abcdef"):
        TextVQADataset(data_dir=dirs["textvqa"], split="val", visual=VisualSource(),
                       vocab=procs["vocab"])


def test_vizwiz_errors(world):
    cfg, dirs = world
    procs = build_processors(cfg, "vizwiz")
    f = dirs["vizwiz"] / "Annotations" / "val.json"
    _edit(f, lambda d: d[1].__setitem__("answerable", 2))
    with pytest.raises(DatasetError, match=r"record 1 \(VizWiz_val_00000001.jpg\): field "
                                           r"'answerable' must be 0 or 1"):
        VizWizDataset(data_dir=dirs["vizwiz"], split="val", visual=VisualSource(),
                      vocab=procs["vocab"])
    _edit(f, lambda d: d[1].__setitem__("image", "../../etc/passwd"))
    with pytest.raises(DatasetError, match="must be a plain file name"):
        VizWizDataset(data_dir=dirs["vizwiz"], split="val", visual=VisualSource(),
                      vocab=procs["vocab"])


def test_coco_errors(world):
    cfg, dirs = world
    procs = build_processors(cfg, "coco")
    f = dirs["coco"] / "annotations" / "captions_val2014.json"
    _edit(f, lambda d: d["annotations"][2].__setitem__("image_id", 999))
    with pytest.raises(DatasetError, match=r"annotations\[2\]: image_id 999 is not in 'images'"):
        COCOCaptionsDataset(data_dir=dirs["coco"], split="val", visual=VisualSource(),
                            vocab=procs["caption_vocab"])


def test_visdial_errors(world):
    cfg, dirs = world
    procs = build_processors(cfg, "visdial")
    f = dirs["visdial"] / "visdial_1.0_val.json"

    def make(split="val"):
        return VisDialDataset(data_dir=dirs["visdial"], split=split, visual=VisualSource(),
                              vocab=procs["vocab"])

    original = f.read_text()
    _edit(f, lambda d: d["data"]["dialogs"][1]["dialog"][4].__setitem__("gt_index", 100))
    with pytest.raises(DatasetError, match=r"dialog of image 8: round 5: field 'gt_index' 100 "
                                           r"is outside 0..99"):
        make()
    f.write_text(original)
    _edit(f, lambda d: d["data"]["dialogs"][0]["dialog"][0]["answer_options"].pop())
    with pytest.raises(DatasetError, match=r"image 7: round 1: field 'answer_options' has 99"):
        make()
    f.write_text(original)
    _edit(f, lambda d: d["data"]["dialogs"][0]["dialog"].pop())
    with pytest.raises(DatasetError, match=r"image 7: field 'dialog' has 9 rounds, expected 10"):
        make()
    f.write_text(original)
    dense = dirs["visdial"] / "visdial_1.0_val_dense_annotations.json"
    _edit(dense, lambda d: d[0].__setitem__("round_id", 0))
    with pytest.raises(DatasetError, match=r"image 7: field 'round_id' 0 is outside 1..10"):
        make()
    sample = dirs["visdial"] / "visdial_1.0_train_dense_sample.json"
    original = sample.read_text()
    _edit(sample, lambda d: d[0].__setitem__("relevance", [1.0] * 99))
    with pytest.raises(DatasetError, match=r"train_dense_sample.json: image 8: field "
                                           r"'relevance' must be 100 numbers"):
        make("train")
    sample.write_text(original)


def test_data_dir_missing_is_named(tmp_path):
    with pytest.raises(DatasetError, match=r"vqa2: data_dir .*nowhere is not a directory"):
        VQA2Dataset(data_dir=tmp_path / "nowhere", split="train", visual=VisualSource(),
                    vocab=None)  # type: ignore[arg-type]

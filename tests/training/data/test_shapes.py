"""ShapesWorld generator: official layouts and keys, answer balance, annotator realism,
the TextVQA lexicon split, OCR boxes, captions, VisDial options/dense relevance, determinism
and the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from training.data import shapes
from training.data.shapes import ALL_DATASETS, LEXICON, generate, main
from training.data.shapes_world import HELDOUT_WORDS, TRAIN_WORDS

REPO = Path(__file__).resolve().parents[3]
SMALL: dict[str, Any] = {"train_images": 40, "val_images": 12, "test_images": 12, "image_size": 96}


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("shapes_world")
    summary = generate(root, seed=0, workers=2, **SMALL)
    return root, summary


@pytest.fixture(scope="module")
def vqa_big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough questions for answer-balance statistics (vqa2 only, 300 train images)."""
    root = tmp_path_factory.mktemp("shapes_vqa")
    generate(root, seed=1, train_images=300, val_images=5, test_images=5, datasets=["vqa2"],
             workers=1)
    return root / "vqa2"


def majority_answer(answers: list[str]) -> str:
    """The most frequent answer after (light) VQA normalization."""
    return Counter(shapes.normalize_answer(a) for a in answers).most_common(1)[0][0]


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.json"))}


# ------------------------------------------------------------------------------------------
# summary and layout
# ------------------------------------------------------------------------------------------


def test_summary_counts(world):
    _, summary = world
    ds = summary["datasets"]
    assert set(ds) == set(ALL_DATASETS)
    assert ds["vqa2"]["train"] == {"images": 40, "questions": 200}
    assert ds["vizwiz"]["test"]["images"] == 12
    assert "test" in ds["coco"] and "no test split" in ds["coco"]["test"]
    assert summary["images"] == 4 * (40 + 12 + 12) + (40 + 12)
    assert summary["seconds"] >= 0


def test_vqa2_layout_and_keys(world):
    root = world[0] / "vqa2"
    all_image_ids: list[int] = []
    for sub in ("train2014", "val2014", "test2015", "test-dev2015"):
        q = load(root / f"v2_OpenEnded_mscoco_{sub}_questions.json")
        assert list(q) == ["info", "task_type", "data_type", "data_subtype", "license",
                           "questions"]
        assert (q["task_type"], q["data_type"], q["data_subtype"]) == (
            "Open-Ended", "mscoco", sub)
        img_sub = "test2015" if sub == "test-dev2015" else sub
        for item in q["questions"]:
            assert list(item) == ["question_id", "image_id", "question"]
            assert item["question_id"] // 1000 == item["image_id"]
            assert item["question"].endswith("?")
            assert (root / img_sub / f"COCO_{img_sub}_{item['image_id']:012d}.jpg").is_file()
        if sub != "test-dev2015":
            ids = sorted({x["image_id"] for x in q["questions"]})
            all_image_ids += ids
            assert len(list((root / sub).glob("*.jpg"))) == len(ids)
    assert len(all_image_ids) == len(set(all_image_ids)), "image ids unique across splits"
    for sub in ("train2014", "val2014"):
        a = load(root / f"v2_mscoco_{sub}_annotations.json")
        assert list(a) == ["info", "data_type", "data_subtype", "license", "annotations"]
        q_ids = [x["question_id"] for x in load(
            root / f"v2_OpenEnded_mscoco_{sub}_questions.json")["questions"]]
        assert [x["question_id"] for x in a["annotations"]] == q_ids
        for ann in a["annotations"]:
            assert list(ann) == ["question_id", "image_id", "question_type", "answer_type",
                                 "multiple_choice_answer", "answers"]
            assert ann["answer_type"] in ("yes/no", "number", "other")
            assert [x["answer_id"] for x in ann["answers"]] == list(range(1, 11))
            assert all(x["answer_confidence"] in ("yes", "maybe", "no") for x in ann["answers"])
            # the multiple-choice answer is the most frequent (normalized) answer
            groups = Counter(shapes.normalize_answer(x["answer"]) for x in ann["answers"])
            top = groups.most_common(1)[0][1]
            assert groups[shapes.normalize_answer(ann["multiple_choice_answer"])] == top
    assert not (root / "v2_mscoco_test2015_annotations.json").exists()


def test_textvqa_layout_and_keys(world):
    root = world[0] / "textvqa"
    for split in ("train", "val", "test"):
        d = load(root / f"TextVQA_0.5.1_{split}.json")
        assert list(d) == ["dataset_type", "dataset_name", "dataset_version", "data"]
        assert (d["dataset_type"], d["dataset_name"], d["dataset_version"]) == (
            split, "textvqa", "0.5.1")
        ocr = load(root / f"TextVQA_Rosetta_OCR_v0.2_{split}.json")
        assert (ocr["dataset_type"], ocr["dataset_name"], ocr["dataset_version"]) == (
            split, "textvqa", "0.2")
        ocr_ids = [o["image_id"] for o in ocr["data"]]
        assert len(ocr_ids) == len(set(ocr_ids)) == SMALL[f"{split}_images"]
        folder = "test_images" if split == "test" else "train_images"
        keys = ["question_id", "question", "question_tokens", "image_id", "image_classes",
                "image_width", "image_height", "flickr_original_url", "flickr_300k_url",
                "set_name"] + ([] if split == "test" else ["answers"])
        for item in d["data"]:
            assert list(item) == keys
            assert re.fullmatch(r"[0-9a-f]{16}", item["image_id"])
            assert item["image_id"] in ocr_ids
            assert item["set_name"] == split
            assert item["image_width"] == item["image_height"] == SMALL["image_size"]
            assert (root / folder / f"{item['image_id']}.jpg").is_file()
            if split != "test":
                assert len(item["answers"]) == 10
                assert all(isinstance(a, str) for a in item["answers"])
        for o in ocr["data"]:
            assert list(o) == ["image_id", "ocr_tokens", "ocr_info"]
            assert [i["word"] for i in o["ocr_info"]] == o["ocr_tokens"]
            for info in o["ocr_info"]:
                b = info["bounding_box"]
                assert list(b) == ["top_left_x", "top_left_y", "width", "height", "rotation",
                                   "yaw", "roll", "pitch"]
                assert 0 <= b["top_left_x"] <= 1 and 0 <= b["top_left_y"] <= 1
                assert 0 < b["top_left_x"] + b["width"] <= 1
                assert 0 < b["top_left_y"] + b["height"] <= 1
    q_ids = [x["question_id"] for s in ("train", "val", "test")
             for x in load(root / f"TextVQA_0.5.1_{s}.json")["data"]]
    assert len(q_ids) == len(set(q_ids))
    # val images live in train_images/, as in the real release
    val_ids = {x["image_id"] for x in load(root / "TextVQA_0.5.1_val.json")["data"]}
    assert all((root / "train_images" / f"{i}.jpg").is_file() for i in val_ids)


def test_vizwiz_layout_and_keys(world):
    root = world[0] / "vizwiz"
    for split in ("train", "val", "test"):
        records = load(root / "Annotations" / f"{split}.json")
        assert isinstance(records, list) and len(records) == SMALL[f"{split}_images"]
        for i, r in enumerate(records):
            assert r["image"] == f"VizWiz_{split}_{i:08d}.jpg"
            assert (root / split / r["image"]).is_file()
            if split == "test":
                assert list(r) == ["image", "question"]
                continue
            assert list(r) == ["image", "question", "answers", "answer_type", "answerable"]
            assert len(r["answers"]) == 10
            assert all(list(a) == ["answer", "answer_confidence"] for a in r["answers"])
            assert r["answer_type"] in ("other", "yes/no", "number", "unanswerable")
            assert r["answerable"] == (0 if r["answer_type"] == "unanswerable" else 1)
            if not r["answerable"]:
                top = Counter(a["answer"] for a in r["answers"]).most_common(1)[0][0]
                assert top == "unanswerable"


def test_vizwiz_unanswerable_share(world):
    root = world[0] / "vizwiz"
    for split in ("train", "val"):
        records = load(root / "Annotations" / f"{split}.json")
        share = sum(r["answerable"] == 0 for r in records) / len(records)
        assert 0.2 <= share <= 0.3, (split, share)


def test_coco_layout_and_captions(world):
    root = world[0] / "coco"
    ann_ids: list[int] = []
    image_ids: list[int] = []
    for sub in ("train2014", "val2014"):
        c = load(root / "annotations" / f"captions_{sub}.json")
        assert list(c) == ["info", "licenses", "images", "annotations"]
        caps: dict[int, list[str]] = defaultdict(list)
        for a in c["annotations"]:
            assert list(a) == ["image_id", "id", "caption"]
            caps[a["image_id"]].append(a["caption"])
            ann_ids.append(a["id"])
        for img in c["images"]:
            assert list(img) == ["id", "file_name", "height", "width", "license",
                                 "date_captured"]
            assert img["file_name"] == f"COCO_{sub}_{img['id']:012d}.jpg"
            assert (root / sub / img["file_name"]).is_file()
            assert len(caps[img["id"]]) == 5
            assert len({x.lower().rstrip(".") for x in caps[img["id"]]}) == 5
            image_ids.append(img["id"])
    assert len(ann_ids) == len(set(ann_ids))
    assert len(image_ids) == len(set(image_ids))
    assert not (root / "annotations" / "captions_test2014.json").exists()
    assert not (root / "test2014").exists()


def test_visdial_layout_options_and_dense(world):
    root = world[0] / "visdial"
    folders = {"train": ("train2014", "COCO_train2014"),
               "val": ("VisualDialog_val2018", "VisualDialog_val2018"),
               "test": ("VisualDialog_test2018", "VisualDialog_test2018")}
    val_ids = []
    test_lengths = set()
    for split in ("train", "val", "test"):
        v = load(root / f"visdial_1.0_{split}.json")
        assert list(v) == ["version", "split", "data"]
        assert (v["version"], v["split"]) == ("1.0", split)
        data = v["data"]
        assert list(data) == ["questions", "answers", "dialogs"]
        assert all(not q.endswith("?") and q == q.lower() for q in data["questions"])
        assert all(a == a.lower() for a in data["answers"])
        folder, prefix = folders[split]
        for d in data["dialogs"]:
            assert list(d) == ["image_id", "caption", "dialog"]
            assert (root / folder / f"{prefix}_{d['image_id']:012d}.jpg").is_file()
            rounds = d["dialog"]
            if split == "test":
                assert 1 <= len(rounds) <= 10
                test_lengths.add(len(rounds))
                for r in rounds[:-1]:
                    assert list(r) == ["question", "answer"]
                assert list(rounds[-1]) == ["question", "answer_options"]
                assert len(rounds[-1]["answer_options"]) == 100
                continue
            assert len(rounds) == 10
            for r in rounds:
                assert list(r) == ["question", "answer", "answer_options", "gt_index"]
                assert len(r["answer_options"]) == 100 == len(set(r["answer_options"]))
                assert r["answer_options"][r["gt_index"]] == r["answer"]
                assert 0 <= r["question"] < len(data["questions"])
            if split == "val":
                val_ids.append(d["image_id"])
    assert len(test_lengths) > 1, "test dialogs have a random number of rounds"
    dense = load(root / "visdial_1.0_val_dense_annotations.json")
    assert [x["image_id"] for x in dense] == val_ids
    val = load(root / "visdial_1.0_val.json")["data"]
    by_id = {d["image_id"]: d for d in val["dialogs"]}
    values: Counter[float] = Counter()
    for x in dense:
        assert list(x) == ["image_id", "round_id", "gt_relevance"]
        assert 1 <= x["round_id"] <= 10
        assert len(x["gt_relevance"]) == 100
        assert set(x["gt_relevance"]) <= {0.0, 0.5, 1.0}
        r = by_id[x["image_id"]]["dialog"][x["round_id"] - 1]
        assert x["gt_relevance"][r["gt_index"]] == 1.0
        values.update(x["gt_relevance"])
    assert values[0.5] > 0 and values[1.0] > len(dense)  # paraphrases of the answer count too
    # VisDial's train dense sample: one in ten training dialogs, lists keyed "relevance"
    train = load(root / "visdial_1.0_train.json")["data"]["dialogs"]
    sample = load(root / "visdial_1.0_train_dense_sample.json")
    assert [x["image_id"] for x in sample] == [d["image_id"] for d in train[::10]]
    for x in sample:
        assert list(x) == ["image_id", "round_id", "relevance"] and len(x["relevance"]) == 100
        r = train[(x["image_id"] - train[0]["image_id"])]["dialog"][x["round_id"] - 1]
        assert x["relevance"][r["gt_index"]] == 1.0


def _style_of_forms() -> dict[str, int]:
    tuples = [*shapes._YES_FORMS.values(), *shapes._NO_FORMS.values(),
              *shapes._POSITION_FORMS.values(), *shapes._SIZE_FORMS.values(),
              *(shapes._number_forms(n) for n in range(9)),
              *(shapes._color_forms(c) for c in shapes.COLOR_NAMES),
              *(shapes._shape_forms(s) for s in shapes.SHAPES)]
    style: dict[str, int] = {}
    for forms in tuples:
        assert len(set(forms)) == len(forms) >= len(shapes.ANSWER_STYLES), forms
        for i, form in enumerate(forms[:len(shapes.ANSWER_STYLES)]):
            assert style.setdefault(form, i) == i, f"{form!r} names two styles"
    return style


def test_visdial_answerer_keeps_one_style_per_dialog(world):
    """The ground-truth wording is the dialog's answerer's style (so the history reveals which
    of the equivalent options is right); every style occurs."""
    style_of = _style_of_forms()
    seen = Counter()
    for split in ("train", "val"):
        data = load(world[0] / "visdial" / f"visdial_1.0_{split}.json")["data"]
        for d in data["dialogs"]:
            styles = {style_of[data["answers"][r["answer"]]] for r in d["dialog"]}
            assert len(styles) == 1, (split, d["image_id"], styles)
            seen.update(styles)
    assert set(seen) == set(range(len(shapes.ANSWER_STYLES)))


def test_visdial_relevance_rules():
    assert shapes.relevance("yes it is", "yes") == 1.0
    assert shapes.relevance("i think so", "yes") == 0.5
    assert shapes.relevance("no", "yes") == 0.0
    assert shapes.relevance("there are 3", "2") == 0.5
    assert shapes.relevance("two", "2") == 1.0
    assert shapes.relevance("red", "2") == 0.0


# ------------------------------------------------------------------------------------------
# what the models learn from: question types, balance, annotators, lexicon
# ------------------------------------------------------------------------------------------


def test_vqa_question_families_and_counts(vqa_big):
    qs = load(vqa_big / "v2_OpenEnded_mscoco_train2014_questions.json")["questions"]
    anns = load(vqa_big / "v2_mscoco_train2014_annotations.json")["annotations"]
    text = [q["question"] for q in qs]
    assert any(t.startswith("what color is the") and "object" not in t for t in text)  # attr
    assert any(t.startswith("what shape is the") for t in text)
    assert any(t.startswith("is there") for t in text)  # existence
    assert any(t.startswith("how many") for t in text)  # counting
    assert any(re.search(r"(left of|right of|above|below|under) the", t) for t in text)
    assert any("the same size" in t or "the same color" in t for t in text)  # comparison
    assert any(t.startswith("are there more") for t in text)
    counts = {a["multiple_choice_answer"] for a in anns if a["question_type"] == "how many"}
    assert {str(n) for n in range(7)} <= counts
    assert {a["question_type"] for a in anns} >= {
        "what color is the", "what shape is the", "is there a", "how many", "are there",
        "is the", "are the"}


def test_vqa_answer_balance(vqa_big):
    anns = load(vqa_big / "v2_mscoco_train2014_annotations.json")["annotations"]
    yes_no = [a["multiple_choice_answer"] for a in anns if a["answer_type"] == "yes/no"]
    assert len(yes_no) > 300
    assert 0.45 <= yes_no.count("yes") / len(yes_no) <= 0.55
    by_type: dict[str, Counter[str]] = defaultdict(Counter)
    for a in anns:
        if a["answer_type"] != "yes/no":
            by_type[a["question_type"]][a["multiple_choice_answer"]] += 1
    assert by_type
    for qtype, c in by_type.items():
        total = sum(c.values())
        assert total >= 100, qtype
        assert c.most_common(1)[0][1] / total <= 0.25, (qtype, c.most_common(3))


def test_vqa_annotator_disagreement(vqa_big):
    anns = load(vqa_big / "v2_mscoco_train2014_annotations.json")["annotations"]
    agree = [sum(x["answer"] == a["multiple_choice_answer"] for x in a["answers"])
             for a in anns]
    assert all(len(a["answers"]) == 10 for a in anns)
    assert sum(n == 10 for n in agree) > 0
    assert sum(2 <= n <= 6 for n in agree) / len(agree) > 0.1  # real disagreement
    every = [x["answer"] for a in anns for x in a["answers"]]
    for variant in ("grey", "round", "two", "Red", "a circle"):
        assert variant in every, variant
    conf = Counter(x["answer_confidence"] for a in anns for x in a["answers"])
    assert conf["yes"] > conf["maybe"] > 0 and conf["no"] > 0


def test_lexicon_and_heldout_answers(world):
    assert len(LEXICON) >= 10_000 and len(set(LEXICON)) == len(LEXICON)
    assert shapes.lexicon() is LEXICON
    assert not set(TRAIN_WORDS) & set(HELDOUT_WORDS)
    root = world[0] / "textvqa"

    def majority(split: str) -> list[str]:
        return [majority_answer(x["answers"])
                for x in load(root / f"TextVQA_0.5.1_{split}.json")["data"]]

    train, val = set(majority("train")), majority("val")
    assert sum(a not in train for a in val) / len(val) > 0.5
    # train sign words only come from the train part of the lexicon
    words = {w for a in train for w in a.split()}
    assert words <= set(TRAIN_WORDS) | set(shapes.COLOR_NAMES)


def test_textvqa_answers_mostly_in_ocr(world):
    root = world[0] / "textvqa"
    data = load(root / "TextVQA_0.5.1_train.json")["data"]
    ocr = {o["image_id"]: o for o in load(root / "TextVQA_Rosetta_OCR_v0.2_train.json")["data"]}
    hits = 0
    for x in data:
        answer = majority_answer(x["answers"])
        tokens = " ".join(ocr[x["image_id"]]["ocr_tokens"]).lower()
        hits += answer in tokens
    assert 0.4 < hits / len(data) < 0.95  # OCR is useful but noisy (drops, char errors)


def test_images_are_valid_jpegs(world):
    root = world[0]
    for path in [*sorted((root / "vqa2" / "train2014").glob("*.jpg"))[:3],
                 *sorted((root / "textvqa" / "test_images").glob("*.jpg"))[:3],
                 *sorted((root / "vizwiz" / "val").glob("*.jpg"))[:3]]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.size == (96, 96) and im.mode == "RGB"


# ------------------------------------------------------------------------------------------
# determinism
# ------------------------------------------------------------------------------------------


def test_same_seed_is_byte_identical_across_processes(world, tmp_path):
    """A second generation through the CLI, in a fresh process with another hash seed and a
    single worker, writes byte-identical JSON and identical images."""
    root, _ = world
    out = tmp_path / "again"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run(
        [sys.executable, "-m", "training.data.shapes", "--out", str(out), "--seed", "0",
         "--train-images", "40", "--val-images", "12", "--test-images", "12",
         "--image-size", "96", "--workers", "1"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["datasets"]["vqa2"]["train"]["questions"] == 200
    first, second = files(root), files(out)
    assert list(first) == list(second)
    for name in first:
        assert first[name] == second[name], name
    images = sorted(p.relative_to(root) for p in root.rglob("*.jpg"))
    assert images == sorted(p.relative_to(out) for p in out.rglob("*.jpg"))
    for rel in images[:: max(1, len(images) // 12)]:
        a = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        assert a == hashlib.sha256((out / rel).read_bytes()).hexdigest(), rel


def test_different_seed_differs(world, tmp_path):
    root, _ = world
    generate(tmp_path, seed=7, workers=1, datasets=["vqa2", "textvqa"], **SMALL)
    for name in ("vqa2/v2_mscoco_train2014_annotations.json",
                 "textvqa/TextVQA_Rosetta_OCR_v0.2_val.json"):
        assert (root / name).read_bytes() != (tmp_path / name).read_bytes()
    img = "vqa2/train2014/COCO_train2014_000000000001.jpg"
    assert (root / img).read_bytes() != (tmp_path / img).read_bytes()
    assert not (tmp_path / "coco").exists()


# ------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, message", [
    (["--train-images", "0"], "positive integer"),
    (["--val-images", "-3"], "positive integer"),
    (["--test-images", "x"], "positive integer"),
    (["--image-size", "32"], ">= 64"),
    (["--datasets", "vqa2,gqa"], "unknown dataset(s) gqa; known: vqa2, textvqa, vizwiz"),
    (["--workers", "0"], "positive integer"),
])
def test_cli_refuses_bad_arguments(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path / "x"), *argv])
    assert exc.value.code != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_requires_out(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code != 0
    assert "--out" in capsys.readouterr().err


def test_api_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="train_images"):
        generate(tmp_path, train_images=0)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, image_size=63)
    with pytest.raises(ValueError, match="known: vqa2"):
        generate(tmp_path, datasets=["vqa3"])
    assert list(tmp_path.iterdir()) == []

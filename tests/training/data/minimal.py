"""Hand-written minimal files in the official formats (a few records each), written by
tests into a temporary directory. Kept small enough to read in one sitting, so a reader
test shows exactly what the official layout looks like."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from PIL import Image


def _img(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _dump(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def answers10(*pairs: tuple[str, int]) -> list[str]:
    out = [a for a, n in pairs for _ in range(n)]
    assert len(out) == 10
    return out


def write_vqa2(root: Path) -> Path:
    d = root / "vqa2"
    for sub, folder, ids in (("train2014", "train2014", (1, 2)), ("val2014", "val2014", (3,)),
                             ("test2015", "test2015", (4,))):
        qs = [{"question_id": i * 10 + k, "image_id": i, "question": q}
              for i in ids for k, q in enumerate(("What color is the ball?", "Is it round?"))]
        _dump(d / f"v2_OpenEnded_mscoco_{sub}_questions.json",
              {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco",
               "data_subtype": sub, "license": {}, "questions": qs})
        for i in ids:
            _img(d / folder / f"COCO_{folder}_{i:012d}.jpg", (200, 10 * i, 0))
        if sub == "test2015":
            continue
        anns = []
        for q in qs:
            if q["question"].startswith("What"):
                texts = answers10(("red", 7), ("Red.", 2), ("orange", 1))
                qt, at = "what color is the", "other"
            else:
                texts = answers10(("yes", 9), ("no", 1))
                qt, at = "is it", "yes/no"
            anns.append({"question_id": q["question_id"], "image_id": q["image_id"],
                         "question_type": qt, "answer_type": at,
                         "multiple_choice_answer": texts[0],
                         "answers": [{"answer_id": j + 1, "answer": t,
                                      "answer_confidence": "yes"} for j, t in enumerate(texts)]})
        _dump(d / f"v2_mscoco_{sub}_annotations.json",
              {"info": {}, "data_type": "mscoco", "data_subtype": sub, "license": {},
               "annotations": anns})
    return d


def write_textvqa(root: Path) -> Path:
    d = root / "textvqa"
    ids = {"train": ["00aa11bb22cc33dd"], "val": ["0123456789abcdef"], "test": ["fedcba9876543210"]}
    for split, image_ids in ids.items():
        data = []
        for n, image_id in enumerate(image_ids):
            rec: dict[str, Any] = {
                "question_id": 100 * len(split) + n, "question": "what is written on the sign?",
                "question_tokens": ["what", "is", "written", "on", "the", "sign"],
                "image_id": image_id, "image_classes": ["sign"], "image_width": 40,
                "image_height": 30, "flickr_original_url": "", "flickr_300k_url": "",
                "set_name": split}
            if split != "test":
                rec["answers"] = answers10(("zorblat", 8), ("Zorblat", 1), ("zorbat", 1))
            data.append(rec)
            folder = "test_images" if split == "test" else "train_images"
            _img(d / folder / f"{image_id}.jpg", (0, 90, 200))
        _dump(d / f"TextVQA_0.5.1_{split}.json",
              {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.5.1",
               "data": data})
        ocr = [{"image_id": i, "ocr_tokens": ["ZORBLAT", "exit"],
                "ocr_info": [
                    {"word": "ZORBLAT", "bounding_box": {
                        "top_left_x": 0.1, "top_left_y": 0.2, "width": 0.5, "height": 0.2,
                        "rotation": 0, "yaw": 0, "roll": 0, "pitch": 0}},
                    {"word": "exit", "bounding_box": {
                        "top_left_x": 0.7, "top_left_y": 0.7, "width": 0.2, "height": 0.1,
                        "rotation": 0, "yaw": 0, "roll": 0, "pitch": 0}}]}
               for i in image_ids]
        _dump(d / f"TextVQA_Rosetta_OCR_v0.2_{split}.json",
              {"dataset_type": split, "dataset_name": "textvqa", "dataset_version": "0.2",
               "data": ocr})
    return d


def write_vizwiz(root: Path) -> Path:
    d = root / "vizwiz"
    for split in ("train", "val", "test"):
        recs = []
        for n in range(2):
            name = f"VizWiz_{split}_{n:08d}.jpg"
            _img(d / split / name, (30 * n, 60, 90))
            rec: dict[str, Any] = {"image": name, "question": "What color is this?"}
            if split != "test":
                unanswerable = n == 1
                texts = (answers10(("unanswerable", 8), ("blue", 2)) if unanswerable
                         else answers10(("blue", 9), ("teal", 1)))
                rec.update({"answers": [{"answer": t, "answer_confidence": "yes"}
                                        for t in texts],
                            "answer_type": "unanswerable" if unanswerable else "other",
                            "answerable": 0 if unanswerable else 1})
            recs.append(rec)
        _dump(d / "Annotations" / f"{split}.json", recs)
    return d


def write_coco(root: Path) -> Path:
    d = root / "coco"
    for sub, ids in (("train2014", (9, 25)), ("val2014", (42,))):
        images = [{"id": i, "file_name": f"COCO_{sub}_{i:012d}.jpg", "height": 30, "width": 40,
                   "license": 1, "date_captured": ""} for i in ids]
        anns = [{"image_id": i, "id": i * 10 + k, "caption": f"A red ball number {k}."}
                for i in ids for k in range(5)]
        for i in ids:
            _img(d / sub / f"COCO_{sub}_{i:012d}.jpg", (i, 0, 0))
        _dump(d / "annotations" / f"captions_{sub}.json",
              {"info": {}, "licenses": [], "images": images, "annotations": anns})
    return d


def write_visdial(root: Path) -> Path:
    d = root / "visdial"
    questions = ["is it red", "how many balls", "is it big"]
    answers = ["yes", "no", "2", "3", "yes it is", "i think so"] + [f"opt {k}" for k in range(100)]
    folders = {"train": ("train2014", "COCO_train2014_"),
               "val": ("VisualDialog_val2018", "VisualDialog_val2018_"),
               "test": ("VisualDialog_test2018", "VisualDialog_test2018_")}
    for split, (folder, prefix) in folders.items():
        dialogs = []
        for image_id in (7, 8):
            _img(d / folder / f"{prefix}{image_id:012d}.jpg", (0, image_id * 20, 0))
            n_rounds = 10 if split != "test" else (3 if image_id == 7 else 1)
            rounds = []
            for r in range(n_rounds):
                opts = list(range(6, 106))
                opts[r % 100] = r % 4  # the true answer among the options
                rd: dict[str, Any] = {"question": r % 3, "answer": r % 4,
                                      "answer_options": opts, "gt_index": r % 100}
                if split == "test":
                    last = r == n_rounds - 1
                    rd = ({"question": r % 3, "answer_options": opts} if last
                          else {"question": r % 3, "answer": r % 4})
                rounds.append(rd)
            dialogs.append({"image_id": image_id, "caption": "a red ball on grass",
                            "dialog": rounds})
        _dump(d / f"visdial_1.0_{split}.json",
              {"version": "1.0", "split": split,
               "data": {"questions": questions, "answers": answers, "dialogs": dialogs}})
    _dump(d / "visdial_1.0_val_dense_annotations.json",
          [{"image_id": 7, "round_id": 2, "gt_relevance": [1.0] + [0.5] + [0.0] * 98}])
    # the train sample's lists are keyed "relevance", as in VisDial v1.0's release
    _dump(d / "visdial_1.0_train_dense_sample.json",
          [{"image_id": 8, "round_id": 3, "relevance": [0.0] * 2 + [1.0, 0.5] + [0.0] * 96}])
    return d


def write_all(root: Path) -> dict[str, Path]:
    return {"vqa2": write_vqa2(root), "textvqa": write_textvqa(root),
            "vizwiz": write_vizwiz(root), "coco": write_coco(root),
            "visdial": write_visdial(root)}

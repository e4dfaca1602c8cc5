"""/textvqa on ShapesWorld images: rapidocr reads the sign on the server and a LoRRA model
(trained here by our trainer, ~40 s) answers with the word it read, a word that is not in
its answer vocabulary: the copy mechanism answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.runners import LoadedModel, load_model
from tests.service.conftest import LiveServer
from training.data import shapes
from training.train import main as train_main

TINY_LORRA = [
    "model.name=lorra", "model.image_size=64", "model.backbone=resnet18",
    "model.freeze_backbone=true", "model.hidden_dim=32", "model.embedding_dim=16",
    "model.attention_dim=32", "model.fusion_dim=32", "model.classifier_dim=32",
    "model.classifier_text_dim=16", "model.image_dim=32", "model.ocr_embedding_dim=16",
    "model.ocr_dim=32", "model.dropout=0.0",
]


@pytest.fixture(scope="module")
def textvqa_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("copy_data")
    # 128 px: large enough for rapidocr to read the signs (the model sees 64 px)
    shapes.generate(root, seed=4, train_images=150, val_images=40, test_images=1,
                    image_size=128, workers=1, datasets="textvqa")
    return root / "textvqa"


@pytest.fixture(scope="module")
def lorra(textvqa_data: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    run = tmp_path_factory.mktemp("copy_run")
    assert train_main([
        *TINY_LORRA, f"datasets.textvqa.data_dir={textvqa_data}",
        "datasets.textvqa.answer_space.max_answers=50", f"run.save_dir={run}",
        "trainer.device=cpu", "data.num_workers=0", "trainer.batch_size=32",
        "trainer.max_updates=150", "trainer.eval_every=1000", "trainer.log_every=50",
        "trainer.checkpoint_every=1000", "optimizer.lr=0.01", "scheduler.type=constant",
        "scheduler.warmup_updates=0"]) == 0
    return load_model("lorra", run / "release", device="cpu")


def test_textvqa_answers_with_a_word_read_by_ocr(serve: Callable[..., LiveServer],
                                                 lorra: LoadedModel,
                                                 textvqa_data: Path) -> None:
    assert lorra.runner is not None
    vocabulary = set(lorra.runner.predictor.processors["answer_space"].answers)
    questions = json.loads((textvqa_data / "TextVQA_0.5.1_val.json").read_text())["data"]
    ocr_file = textvqa_data / "TextVQA_Rosetta_OCR_v0.2_val.json"
    signs = {r["image_id"]: r["ocr_tokens"] for r in json.loads(ocr_file.read_text())["data"]}
    # Questions about the text of an image with one sign (no colour to disambiguate).
    cases = [q for q in questions if len(signs[q["image_id"]]) == 1
             and "color" not in q["question"]][:6]
    assert len(cases) >= 3
    server = serve(models={"lorra": lorra})
    copied_new_words = 0
    with httpx.Client(timeout=60) as c:
        for q in cases:
            image = (textvqa_data / "train_images" / f"{q['image_id']}.jpg").read_bytes()
            r = c.post(f"{server.url}/textvqa", files={"image": ("sign.jpg", image)},
                       data={"question": q["question"], "top_k": "3"})
            assert r.status_code == 200, r.text
            body = r.json()
            read = [w.lower() for w in body["ocr_tokens"]]
            top = body["answers"][0]
            assert body["copied"] == top["copied"]
            if top["copied"]:
                assert top["answer"] in read  # a copy is always one of the words read
            if top["copied"] and top["answer"] not in vocabulary \
                    and top["answer"] == signs[q["image_id"]][0].lower():
                copied_new_words += 1
    # The sign's word, read by OCR on the server, never seen as an answer in training.
    assert copied_new_words >= max(1, int(0.6 * len(cases))), (copied_new_words, len(cases))

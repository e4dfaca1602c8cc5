"""The runner halves: a front built without weights agrees with the full model's, and a job
survives the trip through a (JSON) queue message bit for bit."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from models.processors import ImageTransform
from service.runners import Job, LoadedModel, load_model


def test_front_without_weights_matches(demo_release: Path, demo_model: LoadedModel) -> None:
    light = load_model("demo", demo_release, weights=False)
    assert light.runner is None and light.device == "workers"
    a, b = light.front, demo_model.front
    assert a.tasks == b.tasks and a.datasets == b.datasets
    assert a.transform == b.transform and a.free_form_dialog == b.free_form_dialog
    info = light.info()
    assert info["version"] == demo_model.info()["version"]
    assert info["parameters"] == demo_model.info()["parameters"] > 0


def test_job_message_round_trip() -> None:
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8))
    pixels = ImageTransform(size=224).resize(photo)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 224, 224)
    job = Job(key=("vqa", "vqa2"), pixels=pixels, params={"question": "what?", "top_k": 3})
    text = json.dumps(job.to_message())
    assert len(text) < 200_000  # noise is the worst case for PNG
    back = Job.from_message(json.loads(text))
    assert back.key == job.key and back.params == job.params
    assert torch.equal(back.pixels, job.pixels)


def test_predict_same_after_queue_trip(demo_model: LoadedModel, image_bytes: bytes) -> None:
    assert demo_model.runner is not None
    image = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    params = {"question": "what color is the circle?", "top_k": 3, "dataset": "vqa2"}
    job = demo_model.front.prepare("vqa", image, params)
    again = Job.from_message(json.loads(json.dumps(job.to_message())))
    local, remote = demo_model.runner.predict([job]), demo_model.runner.predict([again])
    assert local[0]["answers"] == remote[0]["answers"]
    # and the split transform is exactly the Predictor's preprocessing
    predictor = demo_model.runner.predictor
    direct = predictor.vqa([image], [params["question"]], top_k=3, dataset="vqa2")
    assert direct[0] == local[0]["answers"]

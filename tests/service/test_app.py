"""Real HTTP against the app serving a model trained by our trainer: the four task routes
(multipart and JSON), the info routes, and the batching engine's behaviour seen from clients
(batching, 429, 504, disconnects)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import httpx
import pytest

from service.runners import Job, LoadedModel, ModelRunner
from tests.service.conftest import LiveServer


def _post(client: httpx.Client, server: LiveServer, route: str, image: bytes,
          **fields: Any) -> httpx.Response:
    data = {k: json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in fields.items()}
    return client.post(f"{server.url}/{route}", files={"image": ("x.jpg", image, "image/jpeg")},
                       data=data)


def test_vqa_multipart_and_json(serve: Callable[..., LiveServer], client: httpx.Client,
                                image_bytes: bytes, demo_model: LoadedModel) -> None:
    server = serve()
    r = _post(client, server, "vqa", image_bytes, question="what color is the circle?",
              top_k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "demo" and body["question"] == "what color is the circle?"
    assert body["dataset"] == "vqa2"
    space = set(demo_model.runner.predictor.processors["answer_space_vqa2"].answers)
    answers = body["answers"]
    assert len(answers) == 3 and {a["answer"] for a in answers} <= space
    scores = [a["score"] for a in answers]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    timing = body["timing_ms"]
    assert {"queue", "inference", "total"} <= set(timing)
    assert timing["total"] >= timing["inference"] > 0
    # The same request as JSON with a base64 image gives the same answers.
    r2 = client.post(f"{server.url}/vqa", json={
        "image": base64.b64encode(image_bytes).decode(), "question": "what color is the circle?",
        "top_k": 3})
    assert r2.status_code == 200, r2.text
    assert r2.json()["answers"] == answers
    # Another answer head of the multi-task model.
    r3 = _post(client, server, "vqa", image_bytes, question="what is it?", dataset="vizwiz")
    assert r3.status_code == 200 and r3.json()["dataset"] == "vizwiz"


def test_textvqa_with_client_ocr(serve: Callable[..., LiveServer], client: httpx.Client,
                                 image_bytes: bytes) -> None:
    server = serve()
    tokens = [{"word": "zorblat", "box": [0.1, 0.1, 0.4, 0.2]},
              {"word": "exit", "box": [0.5, 0.5, 0.7, 0.6]}]
    r = _post(client, server, "textvqa", image_bytes, question="what is written?",
              ocr_tokens=tokens, top_k=2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ocr_tokens"] == ["zorblat", "exit"]
    assert len(body["answers"]) == 2
    assert all(isinstance(a["copied"], bool) for a in body["answers"])
    assert body["copied"] == body["answers"][0]["copied"]
    copied = [a["answer"] for a in body["answers"] if a["copied"]]
    assert set(copied) <= {"zorblat", "exit"}


def test_caption_and_beams(serve: Callable[..., LiveServer], client: httpx.Client,
                           image_bytes: bytes) -> None:
    server = serve()
    r = _post(client, server, "caption", image_bytes, beam_size=3, max_length=12)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["caption"], str)
    beams = body["beams"]
    assert 1 <= len(beams) <= 3 and beams[0]["caption"] == body["caption"]
    assert [b["score"] for b in beams] == sorted((b["score"] for b in beams), reverse=True)
    assert all(len(b["caption"].split()) <= 12 for b in beams)


def test_dialog_with_options_and_without(serve: Callable[..., LiveServer],
                                         client: httpx.Client, image_bytes: bytes) -> None:
    server = serve()
    options = ["red", "blue", "two", "yes", "no"]
    history = [{"question": "is there a circle?", "answer": "yes"}]
    r = client.post(f"{server.url}/dialog", json={
        "image": base64.b64encode(image_bytes).decode(), "caption": "a red circle",
        "history": history, "question": "what color is it?", "options": options})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] in options
    assert sorted(x["answer"] for x in body["ranking"]) == sorted(options)
    assert body["ranking"][0]["answer"] == body["answer"]
    # The multi-task model's dialog head is discriminative: no free-form answers.
    r2 = _post(client, server, "dialog", image_bytes, question="what color is it?",
               history=history)
    assert r2.status_code == 422 and r2.json()["error"]["code"] == "options_required"


def test_info_routes(serve: Callable[..., LiveServer], client: httpx.Client,
                     image_bytes: bytes) -> None:
    server = serve()
    assert client.get(f"{server.url}/healthz").json() == {"status": "ok"}
    ready = client.get(f"{server.url}/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == ["demo"]
    models = client.get(f"{server.url}/models").json()["models"]
    (m,) = models
    assert m["name"] == "demo" and m["family"] == "multitask"
    assert set(m["tasks"]) == {"vqa", "textvqa", "caption", "dialog"}
    assert m["datasets"]["vqa"] == ["vizwiz", "vqa2"] and m["datasets"]["textvqa"] == ["textvqa"]
    assert m["default_datasets"]["vqa"] == "vqa2"
    assert len(m["version"]) == 12 and m["metrics"]["update"] == 20
    assert _post(client, server, "vqa", image_bytes, question="how many?").status_code == 200
    text = client.get(f"{server.url}/metrics").text
    assert 'pythia_requests_total{route="/vqa",status="200"} 1.0' in text
    assert "pythia_batch_size_bucket" in text and 'pythia_queue_depth{model="demo"} 0.0' in text
    assert "pythia_inference_seconds_count" in text
    docs = client.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()
    assert client.get(f"{server.url}/docs-static/swagger-ui-bundle.js").status_code == 200
    spec = client.get(f"{server.url}/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/vqa"]["post"]["requestBody"]["content"]
    page = client.get(f"{server.url}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def _concurrent(n: int, fn: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * n

    def run(i: int) -> None:
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(r is not None for r in out)
    return [r for r in out if r is not None]


def test_concurrent_requests_are_batched(serve: Callable[..., LiveServer],
                                         image_bytes: bytes) -> None:
    server = serve(max_batch_size=16, max_wait_ms=200)
    engine = server.state.engines["demo"]
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32)) as c:
        responses = _concurrent(16, lambda i: _post(c, server, "vqa", image_bytes,
                                                    question=f"how many circles {i}?"))
    assert [r.status_code for r in responses] == [200] * 16
    assert engine.stats.items == 16 and engine.stats.batches < 16
    assert max(r.json()["timing_ms"]["batch_size"] for r in responses) > 1


class GatedRunner(ModelRunner):
    """The real model, held at a gate so tests can fill the queue deterministically."""

    def __init__(self, base: ModelRunner) -> None:
        super().__init__(base.predictor)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.seen: list[str] = []

    def predict(self, jobs: list[Job]) -> list[dict[str, Any]]:
        if jobs[0].params.get("warm_up"):  # the service's start-up pass: not held
            return super().predict(jobs)
        self.entered.set()
        self.gate.wait(30)
        self.seen.extend(str(j.params.get("question")) for j in jobs)
        return super().predict(jobs)


@pytest.fixture
def gated(demo_model: LoadedModel) -> GatedRunner:
    return GatedRunner(demo_model.runner)


def _gated_server(serve: Callable[..., LiveServer], demo_model: LoadedModel,
                  runner: GatedRunner, **settings: Any) -> LiveServer:
    return serve(models={"demo": replace(demo_model, runner=runner)}, **settings)


def _background(fn: Callable[[], httpx.Response]) -> tuple[threading.Thread, list[Any]]:
    box: list[Any] = []

    def run() -> None:
        try:
            box.append(fn())
        except Exception as exc:  # the client may time out on purpose
            box.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, box


def test_full_queue_answers_429(serve: Callable[..., LiveServer], demo_model: LoadedModel,
                                gated: GatedRunner, image_bytes: bytes) -> None:
    server = _gated_server(serve, demo_model, gated, queue_size=1, max_wait_ms=0)
    with httpx.Client(timeout=30) as c:
        first, box1 = _background(lambda: _post(c, server, "vqa", image_bytes, question="a?"))
        assert gated.entered.wait(10)  # the first request holds the inference thread
        second, box2 = _background(lambda: _post(c, server, "vqa", image_bytes, question="b?"))
        deadline = time.monotonic() + 10
        while server.state.engines["demo"].depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = _post(c, server, "vqa", image_bytes, question="c?")
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        gated.gate.set()
        first.join(30)
        second.join(30)
    assert box1[0].status_code == 200 and box2[0].status_code == 200
    assert "c?" not in gated.seen


def test_deadline_answers_504(serve: Callable[..., LiveServer], demo_model: LoadedModel,
                              gated: GatedRunner, image_bytes: bytes) -> None:
    server = _gated_server(serve, demo_model, gated, request_timeout_s=0.5)
    with httpx.Client(timeout=30) as c:
        first, _box = _background(lambda: _post(c, server, "vqa", image_bytes, question="a?"))
        assert gated.entered.wait(10)
        t0 = time.monotonic()
        r = _post(c, server, "vqa", image_bytes, question="late?")
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert time.monotonic() - t0 < 5
        gated.gate.set()
        first.join(30)
    assert "late?" not in gated.seen  # cancelled before its batch formed


def test_disconnected_request_is_dropped(serve: Callable[..., LiveServer],
                                         demo_model: LoadedModel, gated: GatedRunner,
                                         image_bytes: bytes) -> None:
    server = _gated_server(serve, demo_model, gated)
    engine = server.state.engines["demo"]
    with httpx.Client(timeout=30) as c:
        first, box = _background(lambda: _post(c, server, "vqa", image_bytes, question="a?"))
        assert gated.entered.wait(10)
        with httpx.Client(timeout=0.5) as impatient, pytest.raises(httpx.ReadTimeout):
            _post(impatient, server, "vqa", image_bytes, question="gone?")
        deadline = time.monotonic() + 10
        while server.state.in_flight > 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the server notices the disconnect and cancels the item
        assert server.state.in_flight == 1
        gated.gate.set()
        first.join(30)
        assert box[0].status_code == 200
        # The queue is empty again: the abandoned item was dropped, not run.
        r = _post(c, server, "vqa", image_bytes, question="next?")
        assert r.status_code == 200
    assert "gone?" not in gated.seen and engine.stats.cancelled == 1

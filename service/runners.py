"""Loaded models and the runner contract between the HTTP layer and the batching engine.

A request goes through three steps, each on its own kind of thread:

1. ``ModelRunner.prepare(task, image, params) -> Job`` in a decoding thread: the release's
   image transform (and, for TextVQA without client OCR, rapidocr) so the inference thread
   never touches pixels or JPEG bytes;
2. ``ModelRunner.predict(jobs) -> results`` on the model's one inference thread, called by
   ``service.engine.Batcher`` with jobs of one ``Job.key`` (task + the parameters a batch
   must share: the answer head, beam size, ...);
3. the HTTP layer turns the result dict into the response.

Results are plain dicts (JSON-ready): per task

* vqa: ``{"answers": [{"answer", "score"}, ...]}`` (best first, ``top_k`` of them);
* textvqa: ``{"answers": [{"answer", "score", "copied"}, ...], "ocr_tokens": [...]}``;
* caption: ``{"caption", "beams": [{"caption", "score"}, ...]}``;
* dialog: ``{"answer"[, "ranking": [{"answer", "score"}, ...]]}``;

each with ``"inference_ms"`` (the batch's model time) and ``"batch_size"`` added.

The same classes run inside a Celery worker (``service.worker``): prepare and predict are
plain functions of plain data.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.predictor import DEFAULT_DATASET, Predictor
from models.processors import ImageTransform
from models.processors.ocr_engine import OCREngine, OCRWord
from models.release import MODEL_FILE, load_config, load_metrics, load_skeleton

__all__ = ["TASKS", "Job", "LoadedModel", "ModelFront", "ModelRunner", "TaskError", "load_model"]

TASKS = ("vqa", "textvqa", "caption", "dialog")


class TaskError(ValueError):
    """A request the model cannot serve as asked (HTTP 404 for a task, 422 otherwise)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Job:
    """One prepared request: what the engine queues and batches (and what a Celery message
    carries, ``to_message``/``from_message``)."""

    key: tuple[Any, ...]  # (task, ...): jobs of one key share a batch
    pixels: torch.Tensor  # (3, S, S) uint8: the first half of the release's image transform
    params: dict[str, Any] = field(default_factory=dict)
    started: float = 0.0  # time.perf_counter() when its batch began (set by predict)

    def to_message(self) -> dict[str, Any]:
        """JSON-ready: the pixels as a lossless PNG in base64 (a few KB to ~150 KB)."""
        buf = io.BytesIO()
        Image.fromarray(self.pixels.permute(1, 2, 0).contiguous().numpy()).save(
            buf, format="PNG", compress_level=1)
        return {"key": list(self.key), "png": base64.b64encode(buf.getvalue()).decode("ascii"),
                "params": self.params}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Job:
        data = base64.b64decode(message["png"], validate=True)
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            arr = np.asarray(img.convert("RGB"))
        pixels = torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()  # (3, S, S)
        return cls(key=tuple(message["key"]), pixels=pixels, params=dict(message["params"]))


class ModelFront:
    """What serving a release needs before its model runs: the tasks and answer heads it
    serves, request checks, the resize half of its image transform and OCR. Built from the
    model (or its weightless skeleton, ``models.release.load_skeleton``) and processors, so a
    Celery-mode API never loads weights."""

    def __init__(self, model: Any, processors: dict[str, Any], *,
                 ocr_engine: OCREngine | None = None) -> None:
        self.model = model  # the real model, or its weightless skeleton
        self.processors = processors
        self.family: str = model.family
        self.hparams: dict[str, Any] = dict(model.hparams)
        transform = processors.get("image_transform")
        self.transform: ImageTransform = transform if transform is not None \
            else ImageTransform()
        self._ocr = ocr_engine
        self._ocr_lock = threading.Lock()  # one rapidocr engine, one caller at a time
        routes = getattr(model, "route", None)
        ocr_heads = set(getattr(model, "ocr_heads", {}) or {})
        # The datasets a task can be asked for: the multi-task model's routes, else the
        # family's one head (any name is accepted and ignored by single-task families).
        self.datasets: dict[str, list[str]] = {}
        for task in model.tasks:
            if isinstance(routes, dict):
                wanted = {"vqa": "vqa", "textvqa": "vqa", "caption": "caption",
                          "dialog": "dialog"}[task]
                names = sorted(d for d, r in routes.items() if r == wanted)
                if task == "textvqa":
                    names = [d for d in names if d in ocr_heads]
                elif task == "vqa":
                    names = [d for d in names if d not in ocr_heads]
                self.datasets[task] = names
            else:
                self.datasets[task] = [DEFAULT_DATASET[task]]
        self.free_form_dialog = callable(getattr(model, "generate_answers", None)) and \
            self.hparams.get("decoder", "gen") in ("gen", "both")

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t in TASKS if self.datasets.get(t))

    def default_dataset(self, task: str) -> str:
        names = self.datasets.get(task) or []
        preferred = DEFAULT_DATASET[task]
        return preferred if preferred in names or not names else names[0]

    def check(self, task: str, dataset: str | None) -> str:
        """The dataset (answer head) to use; TaskError 404 if the model does not serve it."""
        if task not in self.tasks:
            raise TaskError(404, "task_not_served",
                            f"this model serves {list(self.tasks)}, not {task!r}")
        if dataset is None:
            return self.default_dataset(task)
        if dataset not in self.datasets[task]:
            raise TaskError(404, "dataset_not_served",
                            f"{task}: no answer head for dataset {dataset!r}; this model has "
                            f"{self.datasets[task]}")
        return dataset

    # -- step 1: decoding threads -------------------------------------------------------------
    def ocr(self, image: Image.Image) -> list[OCRWord]:
        with self._ocr_lock:
            if self._ocr is None:
                self._ocr = OCREngine()
            return self._ocr(image)

    def warm_up(self) -> None:
        """Start the OCR engine now (it takes seconds) rather than on the first request."""
        if "textvqa" in self.tasks:
            with self._ocr_lock:
                if self._ocr is None:
                    self._ocr = OCREngine()

    def prepare(self, task: str, image: Image.Image, params: dict[str, Any]) -> Job:
        """``params`` holds the validated request fields (question, top_k, dataset, ...)."""
        pixels = self.transform.resize(image)  # (3, S, S) uint8
        if task in ("vqa", "textvqa"):
            key: tuple[Any, ...] = (task, params["dataset"])
            if task == "textvqa" and params.get("ocr_tokens") is None:
                params = {**params, "ocr": [[w.word, list(w.box)] for w in self.ocr(image)]}
            elif task == "textvqa":
                params = {**params, "ocr": [[t["word"], list(t["box"])]
                                            for t in params["ocr_tokens"]]}
        elif task == "caption":
            key = (task, int(params["beam_size"]), int(params["max_length"]))
        else:
            key = (task,)
            if not params.get("options") and not self.free_form_dialog:
                raise TaskError(422, "options_required",
                                f"this {self.family!r} model ranks candidate answers only "
                                "(no generative decoder): send options")
        return Job(key=key, pixels=pixels, params=params)


class ModelRunner:
    """Step 2 for one loaded ``Predictor``: runs batches of jobs of one key."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def warm_up(self, front: ModelFront) -> None:
        """One forward pass on a blank image (first-call allocations, lazy kernels)."""
        task = front.tasks[0]
        image = Image.new("RGB", (front.transform.size, front.transform.size))
        params: dict[str, Any] = {"question": "what is it?", "top_k": 1,
                                  "dataset": front.default_dataset(task), "beam_size": 1,
                                  "max_length": 3, "ocr_tokens": [], "history": [],
                                  "options": ["yes", "no"], "warm_up": True}
        with contextlib.suppress(Exception):  # a warm-up never stops the service
            self.predict([front.prepare(task, image, params)])

    # -- step 2: the inference thread -----------------------------------------------------------
    def predict(self, jobs: list[Job]) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        for job in jobs:
            job.started = t0
        task = jobs[0].key[0]
        p = self.predictor
        # The second half of the transform on the whole batch at once: elementwise, so
        # exactly Predictor.preprocess of each image.
        pixels = list(p.transform.normalize_batch(torch.stack([j.pixels for j in jobs])))
        out: list[dict[str, Any]]
        if task == "vqa":
            k = max(int(j.params["top_k"]) for j in jobs)
            answers = p.vqa(pixels, [j.params["question"] for j in jobs], top_k=k,
                            dataset=jobs[0].key[1])
            out = [{"answers": a[: int(j.params["top_k"])]} for a, j in zip(answers, jobs)]
        elif task == "textvqa":
            k = max(int(j.params["top_k"]) for j in jobs)
            results = p.textvqa(pixels, [j.params["question"] for j in jobs],
                                ocr=[[(w, b) for w, b in j.params["ocr"]] for j in jobs],
                                top_k=k, dataset=jobs[0].key[1])
            out = [{"answers": r["answers"][: int(j.params["top_k"])],
                    "ocr_tokens": r["ocr_tokens"]} for r, j in zip(results, jobs)]
        elif task == "caption":
            out = p.caption(pixels, beam_size=jobs[0].key[1], max_length=jobs[0].key[2])
        else:
            out = p.dialog(pixels, [j.params["history"] for j in jobs],
                           [j.params["question"] for j in jobs],
                           captions=[j.params.get("caption") or "" for j in jobs],
                           options=[j.params.get("options") or [] for j in jobs]
                           if any(j.params.get("options") for j in jobs) else None)
        ms = round((time.perf_counter() - t0) * 1000, 3)
        for r in out:
            r["inference_ms"] = ms
            r["batch_size"] = len(jobs)
        return out


@dataclass
class LoadedModel:
    name: str
    path: Path
    front: ModelFront
    runner: ModelRunner | None  # None where workers run the model (PYTHIA_QUEUE=celery)
    config: dict[str, Any]
    metrics: dict[str, Any] | None
    loaded_at: float
    version: str  # sha256 of the weights file, first 12 hex digits
    exported_at: str  # the weights file's modification time, ISO 8601 UTC
    parameters: int = 0
    device: str = "cpu"

    @property
    def family(self) -> str:
        return self.front.family

    def info(self) -> dict[str, Any]:
        """What ``GET /models`` lists."""
        front = self.front
        return {
            "name": self.name,
            "family": front.family,
            "tasks": list(front.tasks),
            "datasets": {t: front.datasets[t] for t in front.tasks},
            "default_datasets": {t: front.default_dataset(t) for t in front.tasks},
            "version": self.version,
            "release": {"format_version": self.config.get("format_version"),
                        "created_by": self.config.get("created_by"),
                        "torch_version": self.config.get("torch_version"),
                        "exported_at": self.exported_at},
            "image_size": front.transform.size,
            "device": self.device,
            "parameters": self.parameters,
            "metrics": self.metrics,
            "path": str(self.path),
        }


def load_model(name: str, path: str | Path, *, device: str = "auto",
               weights: bool = True) -> LoadedModel:
    """Load a release directory (safetensors + JSON, nothing unpickled) for serving; with
    ``weights=False`` only its front (a Celery-mode API: workers hold the weights)."""
    root = Path(path)
    if weights:
        predictor = Predictor.from_pretrained(root, device=device)
        front = ModelFront(predictor.model, predictor.processors)
        runner: ModelRunner | None = ModelRunner(predictor)
        where = str(predictor.device)
    else:
        skeleton, processors = load_skeleton(root)
        front, runner, where = ModelFront(skeleton, processors), None, "workers"
    config = load_config(root)
    weights_file = root / MODEL_FILE
    digest = hashlib.sha256()
    with weights_file.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    exported = datetime.fromtimestamp(weights_file.stat().st_mtime, tz=UTC)
    return LoadedModel(name=name, path=root, front=front, runner=runner, config=config,
                       metrics=load_metrics(root), loaded_at=time.time(),
                       version=digest.hexdigest()[:12],
                       exported_at=exported.isoformat(timespec="seconds"),
                       parameters=int(config.get("parameters", 0)), device=where)

"""Fixtures of the service tests: a tiny multi-task model trained by our own trainer on tiny
ShapesWorld data (once per session), and real uvicorn servers on free ports."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from service.app import create_app
from service.runners import LoadedModel, load_model
from service.settings import Settings
from tests.training.test_train_multitask import TINY_MODEL
from training.data import shapes
from training.train import main as train_main

DATASETS = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")
# the tiny multi-task model of the trainer's tests
TINY_MULTITASK = TINY_MODEL


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("service_shapes")
    shapes.generate(root, seed=3, train_images=16, val_images=8, test_images=4, image_size=64,
                    workers=1)
    return root


@pytest.fixture(scope="session")
def demo_release(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-task release serving all four tasks (20 updates: it answers, not well)."""
    run = tmp_path_factory.mktemp("service_run")
    args = [*TINY_MULTITASK, *(f"datasets.{d}.data_dir={shapes_root / d}" for d in DATASETS),
            f"run.save_dir={run}", "trainer.device=cpu", "data.num_workers=0",
            "trainer.batch_size=8", "trainer.max_updates=20", "trainer.eval_every=1000",
            "trainer.log_every=10", "trainer.checkpoint_every=1000", "scheduler.type=constant",
            "scheduler.warmup_updates=0", "data.sampling=round_robin"]
    assert train_main(args) == 0
    return run / "release"


@pytest.fixture(scope="session")
def demo_model(demo_release: Path) -> LoadedModel:
    return load_model("demo", demo_release, device="cpu")


@pytest.fixture(scope="session")
def image_bytes(shapes_root: Path) -> bytes:
    return next((shapes_root / "vqa2" / "val2014").glob("*.jpg")).read_bytes()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LiveServer:
    """A real uvicorn server in a thread (the app's lifespan starts and drains the engines)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def state(self) -> Any:
        return self.app.state.service

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def serve(demo_model: LoadedModel) -> Iterator[Callable[..., LiveServer]]:
    """``serve(**settings) -> LiveServer`` over the demo model (and ``models=`` if given)."""
    servers: list[LiveServer] = []

    def start(models: dict[str, LoadedModel] | None = None, **overrides: Any) -> LiveServer:
        settings = Settings(**{"device": "cpu", **overrides})
        server = LiveServer(create_app(settings, models or {"demo": demo_model})).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for a module's tests (``client`` is a fresh one per test)."""
    with httpx.Client(timeout=30) as c:
        yield c

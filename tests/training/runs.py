"""Helpers shared by the tests that train through training/train.py: the tiny ShapesWorld they
train on and the metrics log they read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from training.data import shapes


def tiny_world(factory: pytest.TempPathFactory, name: str, datasets: str | None = None) -> Path:
    """ShapesWorld at 64 px with 16 train / 8 val / 4 test images (seed 0); ``datasets``
    comma-separated (default: all five)."""
    root = factory.mktemp(name)
    shapes.generate(root, seed=0, train_images=16, val_images=8, test_images=4, image_size=64,
                    workers=1, **({"datasets": datasets} if datasets else {}))
    return root


def records(save_dir: Path, event: str) -> list[dict[str, Any]]:
    """The ``event`` records of a run's metrics.jsonl, in order."""
    lines = (save_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("event") == event]

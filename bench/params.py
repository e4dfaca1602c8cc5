"""Parameter counts of the model zoo at published sizes. Prints one JSON object.

    .venv/bin/python bench/params.py

Models are built on the meta device (no memory, no weights), from each family's
``PUBLISHED_RECIPE`` where the module defines one, else from the family's constructor defaults
(which follow the paper) with the sizes given here. ``trainable`` leaves out a frozen
backbone; ``backbone`` is the ResNet part when the recipe has one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import models
from models import butd, pythia, visdial

RECIPES: dict[str, tuple[dict[str, Any], str]] = {
    "pythia": (pythia.PUBLISHED_RECIPE, "Pythia v0.1 / MMF pythia.yaml (VQA v2)"),
    # LoRRA: Pythia's recipe with TextVQA's 3,996-answer space and 50 OCR slots of 300-d
    "lorra": ({**pythia.PUBLISHED_RECIPE, "num_answers": 3996},
              "Pythia recipe + OCR attention and copy (TextVQA)"),
    # BAN-8: the constructor defaults (GRU 1280, 8 glimpses, rank 3); vocabulary assumed 20,000
    "ban": ({"vocab_size": 20000, "num_answers": 3129}, "BAN-8 defaults (VQA v2)"),
    "butd": (butd.PUBLISHED_RECIPE, "BUTD captioner (COCO)"),
    "visdial": (visdial.PUBLISHED_RECIPE, "late fusion, discriminative + generative (VisDial)"),
}


def count(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    with torch.device("meta"):
        model = models.create_model(name, **kwargs)
    total = model.num_parameters()
    trainable = model.num_parameters(trainable_only=True)
    grid = getattr(model, "grid_encoder", None)
    backbone = sum(p.numel() for p in grid.parameters()) if grid is not None else 0
    return {"total": total, "trainable": trainable, "backbone": backbone,
            "total_millions": round(total / 1e6, 1),
            "trainable_millions": round(trainable / 1e6, 1)}


def main() -> None:
    out = {}
    for name, (kwargs, what) in RECIPES.items():
        out[name] = {"recipe": what, **count(name, kwargs)}
    missing = sorted(set(models.list_models()) - set(RECIPES))
    if missing:
        out["_without_published_recipe"] = missing  # type: ignore[assignment]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

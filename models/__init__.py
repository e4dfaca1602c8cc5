"""Pure-torch model zoo: layers, processors, model families, the release format (leaf package:
imports nothing from ``training`` or ``service``).

    models.list_models()                       # registered family names
    models.create_model("pythia", **kwargs)    # a family from keyword arguments
    models.save_pretrained(model, "release/", processors=..., metrics=...)
    model, processors = models.load("release/")
"""

from __future__ import annotations

from typing import Any

# Importing a family module registers it in MODELS.
from models import ban, butd, lorra, multitask, pythia, visdial  # noqa: F401
from models.base import BaseModel
from models.registry import LOSSES, MODELS, PROCESSORS, Registry
from models.release import ReleaseError, load, save_pretrained


def list_models() -> list[str]:
    """Names of the registered model families (built-in ones and any imported plugins)."""
    return MODELS.names()


def create_model(name: str, **kwargs: Any) -> BaseModel:
    """Build family ``name`` from keyword arguments (KeyError listing known families)."""
    model: BaseModel = MODELS.get(name)(**kwargs)
    return model


__all__ = [
    "LOSSES",
    "MODELS",
    "PROCESSORS",
    "BaseModel",
    "Registry",
    "ReleaseError",
    "create_model",
    "list_models",
    "load",
    "save_pretrained",
]

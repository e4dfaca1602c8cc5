"""The registries of the training side: datasets, metrics, optimizers, schedulers.

Same contract as ``models.registry.Registry``: a duplicate name is an error, a miss raises
KeyError listing the known names, and nothing here holds runtime state. Built-in entries
register in the module that defines them; those modules are imported by
``training.config.import_builtin_modules`` (and user modules by the ``imports`` config key).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from models.registry import LOSSES, MODELS, PROCESSORS, Registry

DATASETS: Registry[Callable[..., Any]] = Registry("datasets")
METRICS: Registry[Callable[..., Any]] = Registry("metrics")
OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizers")
SCHEDULERS: Registry[Callable[..., Any]] = Registry("schedulers")

__all__ = [
    "DATASETS",
    "LOSSES",
    "METRICS",
    "MODELS",
    "OPTIMIZERS",
    "PROCESSORS",
    "SCHEDULERS",
    "Registry",
]

"""Pure-torch model zoo: layers, processors, registry (leaf package: imports nothing from
``training`` or ``service``)."""

from models.registry import LOSSES, MODELS, PROCESSORS, Registry

__all__ = ["LOSSES", "MODELS", "PROCESSORS", "Registry"]

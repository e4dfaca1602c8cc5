"""Small, strict registries: one per kind of component.

A registry maps a name to a class or factory. It holds no runtime state (no
built objects, no config): only what was registered at import time.

    MODELS = Registry("models")

    @MODELS.register("pythia")
    class Pythia(nn.Module): ...

    MODELS.get("pythia")      # -> Pythia
    MODELS.get("pythai")      # KeyError: "models: no 'pythai'; did you mean 'pythia'? known: ..."
    MODELS.register("pythia") # ValueError: duplicate name

Users extend the system from their own code: a module named under the config key
``imports`` is imported before anything is built, and its ``@REGISTRY.register``
decorators run then (see ``training.config.import_user_modules``).

The registries of the ``models`` package live here (models, losses, processors);
those of the training side (datasets, metrics, optimizers, schedulers) in
``training/registry.py``. Both use this class.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table where a duplicate name is an error and a miss lists the names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._table: dict[str, T] = {}

    def register(self, name: str | None = None, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name``: ``@R.register("x")`` or ``R.register("x", f)``.

        Without a name the object's ``__name__`` is used. A name already taken raises ValueError,
        naming both the old and the new object, so two plugins cannot silently shadow each other.
        """

        def _do(o: T) -> T:
            key = name if name is not None else getattr(o, "__name__", None)
            if not isinstance(key, str) or not key:
                raise ValueError(f"{self.kind}: a registered name must be a non-empty string")
            if key in self._table:
                old = self._table[key]
                raise ValueError(
                    f"{self.kind}: the name {key!r} is already registered "
                    f"(by {_describe(old)}; now by {_describe(o)})"
                )
            self._table[key] = o
            return o

        if obj is not None:
            return _do(obj)
        return _do

    def get(self, name: str) -> T:
        """The object registered as ``name``; a miss raises KeyError naming close/known names."""
        try:
            return self._table[name]
        except KeyError:
            raise KeyError(self._miss_message(name)) from None

    def _miss_message(self, name: str) -> str:
        known = sorted(self._table)
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listed = ", ".join(known) if known else "(none registered)"
        return f"{self.kind}: no {name!r}{hint} known: {listed}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._table)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _describe(obj: object) -> str:
    mod = getattr(obj, "__module__", None)
    qual = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{mod}.{qual}" if mod else str(qual)


# The registries of the models package. Families register themselves in their own file.
MODELS: Registry[Callable[..., Any]] = Registry("models")
LOSSES: Registry[Callable[..., Any]] = Registry("losses")
PROCESSORS: Registry[Callable[..., Any]] = Registry("processors")

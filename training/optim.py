"""Optimizers, learning-rate schedules and gradient clipping.

Optimizers and schedulers register themselves in ``training.registry.OPTIMIZERS`` and
``training.registry.SCHEDULERS`` when this module is imported; users add their own the same way
(``@OPTIMIZERS.register("lamb")``) from a module named under the ``imports`` config key.

Config keys
-----------
``optimizer`` (read by :func:`build_optimizer`; default in brackets)::

    type: adamax                  # [adamax] a name in OPTIMIZERS: adamax | adamw | sgd | ...
    lr: 0.01                      # [0.01] base learning rate (Pythia's published recipe)
    weight_decay: 0.0             # [0.0] L2 / decoupled decay of the decayed groups
    backbone_lr_scale: 0.1        # [0.1] image backbone lr = lr * scale; 0 freezes it in effect
    no_decay_norm_and_bias: true  # [true] biases and normalisation weights get no weight decay
    # any other key is passed to the factory as a keyword argument, e.g.
    # betas: [0.9, 0.999], eps: 1e-8 (adamax, adamw); momentum: 0.9, nesterov: false (sgd)

``scheduler`` (read by :func:`build_scheduler`; every schedule counts *updates*, not epochs;
``max_updates`` comes from ``trainer.max_updates``)::

    type: pythia                  # [pythia] pythia | warmup_cosine | warmup_linear | constant
    warmup_updates: 1000          # [0] linear warm-up length; 0 disables the warm-up
    warmup_factor: 0.2            # [0.2] lr multiplier at update 0 (MMF's default)
    steps: [15000, 18000]         # [[]] pythia: updates at which the lr is multiplied by gamma
    gamma: 0.1                    # [0.1] pythia: the multiplier at each step
    min_lr_ratio: 0.0             # [0.0] warmup_cosine / warmup_linear: final lr / lr

Gradient clipping: :func:`clip_gradients` takes the max norm (Pythia's recipe: 0.25; ``None``
or 0 disables clipping but still returns the norm); the key that holds it belongs to the
trainer's config. :data:`PUBLISHED_RECIPE` holds Pythia's published values for all three.

Schedule semantics: the LR multiplier of update ``u`` (0-based; ``u`` is the scheduler's
``last_epoch``, i.e. call ``scheduler.step()`` once after every ``optimizer.step()``) is

* warm-up, for ``u < warmup_updates``: ``warmup_factor + (1 - warmup_factor) * u / warmup``;
* ``pythia``: ``gamma ** (number of steps <= u)`` (so the drop takes effect exactly *at* a step);
* ``warmup_cosine``: ``m + (1 - m) * (1 + cos(pi * p)) / 2``;
* ``warmup_linear``: ``m + (1 - m) * (1 - p)``, with ``m = min_lr_ratio`` and
  ``p = clamp((u - warmup) / (max_updates - warmup), 0, 1)``;
* ``constant``: 1.

The multipliers are picklable callable objects, so ``LambdaLR.state_dict()`` saves them and a
resumed scheduler reproduces the exact LR sequence.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from training.registry import OPTIMIZERS, SCHEDULERS

__all__ = [
    "NORM_TYPES",
    "PUBLISHED_RECIPE",
    "ConstantMultiplier",
    "CosineMultiplier",
    "LinearMultiplier",
    "PythiaMultiplier",
    "WarmupMultiplier",
    "build_optimizer",
    "build_scheduler",
    "clip_gradients",
    "current_lrs",
    "param_groups",
]

#: Pythia's published optimisation recipe (VQA v2, 22k updates at batch 512; FORMATS.md).
PUBLISHED_RECIPE: dict[str, Any] = {
    "optimizer": {"type": "adamax", "lr": 0.01, "weight_decay": 0.0},
    "scheduler": {
        "type": "pythia",
        "warmup_updates": 1000,
        "warmup_factor": 0.2,
        "steps": [15000, 18000, 20000, 21000],
        "gamma": 0.1,
    },
    "clip_grad_norm": 0.25,
    "max_updates": 22000,
}

#: Module classes whose weights count as normalisation weights (never weight-decayed).
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._NormBase,
    nn.RMSNorm,
)


# --------------------------------------------------------------------------- parameter groups


def _is_norm(module: nn.Module) -> bool:
    """A normalisation layer: a known norm type, or a custom class named ``...Norm``."""
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith("Norm")


def param_groups(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float = 0.0,
    backbone_lr_scale: float = 0.1,
    no_decay_norm_and_bias: bool = True,
) -> list[dict[str, Any]]:
    """The model's trainable parameters split into named optimizer groups.

    Groups (empty ones are left out), each a dict with ``name``, ``params``, ``lr`` and
    ``weight_decay``:

    * ``backbone`` / ``backbone_no_decay``: the parameters yielded by
      ``model.backbone_parameters()`` (when the model has that method), at
      ``lr * backbone_lr_scale`` (a scale of 0 keeps them in place, in effect frozen);
    * ``default`` / ``no_decay``: everything else, at ``lr``.

    The ``*no_decay`` groups hold biases and the weights of normalisation layers (weight decay
    0) when ``no_decay_norm_and_bias`` is set. Parameters with ``requires_grad=False`` are left
    out entirely; every trainable parameter is in exactly one group (checked).
    """
    if backbone_lr_scale < 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")
    backbone_fn = getattr(model, "backbone_parameters", None)
    backbone_ids = {id(p) for p in backbone_fn()} if callable(backbone_fn) else set()

    buckets: dict[str, list[nn.Parameter]] = {
        "backbone": [], "backbone_no_decay": [], "default": [], "no_decay": [],
    }
    seen: set[int] = set()
    for module in model.modules():
        norm = _is_norm(module)
        for pname, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:  # frozen, or shared and placed
                continue
            seen.add(id(param))
            no_decay = no_decay_norm_and_bias and (norm or pname == "bias")
            if id(param) in backbone_ids:
                key = "backbone_no_decay" if no_decay else "backbone"
            else:
                key = "no_decay" if no_decay else "default"
            buckets[key].append(param)

    settings = {
        "backbone": (lr * backbone_lr_scale, weight_decay),
        "backbone_no_decay": (lr * backbone_lr_scale, 0.0),
        "default": (lr, weight_decay),
        "no_decay": (lr, 0.0),
    }
    groups: list[dict[str, Any]] = [
        {"name": name, "params": params, "lr": settings[name][0],
         "weight_decay": settings[name][1]}
        for name, params in buckets.items() if params
    ]

    placed = [id(p) for g in groups for p in g["params"]]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if len(placed) != len(set(placed)) or set(placed) != trainable:
        raise AssertionError(
            f"param_groups: {len(placed)} placements ({len(set(placed))} distinct) "
            f"for {len(trainable)} trainable parameters"
        )
    return groups


def current_lrs(optimizer: Optimizer) -> dict[str, float]:
    """The current learning rate of every group, keyed by its ``name`` (``group<i>`` if none)."""
    return {str(g.get("name", f"group{i}")): float(g["lr"])
            for i, g in enumerate(optimizer.param_groups)}


# --------------------------------------------------------------------------- optimizers


def _betas(betas: Sequence[float]) -> tuple[float, float]:
    if len(betas) != 2:
        raise ValueError(f"betas must have two values, got {list(betas)}")
    return float(betas[0]), float(betas[1])


@OPTIMIZERS.register("adamax")
def adamax(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
) -> Optimizer:
    """Adamax (Pythia's published optimizer); per-group ``lr``/``weight_decay`` take precedence."""
    return torch.optim.Adamax(params, lr=lr, betas=_betas(betas), eps=eps,
                              weight_decay=weight_decay)


@OPTIMIZERS.register("adamw")
def adamw(
    params: Iterable[Any],
    *,
    lr: float = 1e-3,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    amsgrad: bool = False,
) -> Optimizer:
    """AdamW (decoupled weight decay); per-group ``lr``/``weight_decay`` take precedence."""
    return torch.optim.AdamW(params, lr=lr, betas=_betas(betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=amsgrad)


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[Any],
    *,
    lr: float = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
) -> Optimizer:
    """SGD with (optionally Nesterov) momentum; Nesterov needs momentum > 0 and dampening 0."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd: nesterov needs momentum > 0 and dampening 0, "
                         f"got momentum={momentum}, dampening={dampening}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov,
                           dampening=dampening, weight_decay=weight_decay)


def _plain(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of ``cfg`` (an OmegaConf node becomes Python lists/dicts)."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return dict(cfg)
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(out, dict)
        return {str(k): v for k, v in out.items()}
    return dict(cfg)


def build_optimizer(model: nn.Module, cfg_optimizer: Mapping[str, Any]) -> Optimizer:
    """The optimizer described by ``cfg_optimizer`` (see the module docstring) over ``model``.

    An unknown ``type`` raises KeyError listing the registered names; keys other than ``type``,
    ``lr``, ``weight_decay``, ``backbone_lr_scale`` and ``no_decay_norm_and_bias`` go to the
    factory as keyword arguments (an unexpected one raises TypeError naming it).
    """
    cfg = _plain(cfg_optimizer)
    factory = OPTIMIZERS.get(str(cfg.pop("type", "adamax")))
    lr = float(cfg.pop("lr", 0.01))
    weight_decay = float(cfg.pop("weight_decay", 0.0))
    groups = param_groups(
        model,
        lr=lr,
        weight_decay=weight_decay,
        backbone_lr_scale=float(cfg.pop("backbone_lr_scale", 0.1)),
        no_decay_norm_and_bias=bool(cfg.pop("no_decay_norm_and_bias", True)),
    )
    if not groups:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    optimizer: Optimizer = factory(groups, lr=lr, weight_decay=weight_decay, **cfg)
    return optimizer


# --------------------------------------------------------------------------- schedules


class WarmupMultiplier:
    """LR multiplier with linear warm-up from ``warmup_factor`` to 1, then :meth:`after`.

    A plain class with plain attributes, so ``LambdaLR.state_dict()`` records it and pickles.
    """

    def __init__(self, *, warmup_updates: int = 0, warmup_factor: float = 0.2) -> None:
        if warmup_updates < 0:
            raise ValueError(f"warmup_updates must be >= 0, got {warmup_updates}")
        if warmup_factor < 0:
            raise ValueError(f"warmup_factor must be >= 0, got {warmup_factor}")
        self.warmup_updates = int(warmup_updates)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, update: int) -> float:
        if update < self.warmup_updates:
            alpha = update / self.warmup_updates
            return self.warmup_factor * (1.0 - alpha) + alpha
        return self.after(update)

    def after(self, update: int) -> float:
        """The multiplier once the warm-up is over."""
        return 1.0

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class ConstantMultiplier(WarmupMultiplier):
    """Warm-up, then 1."""


class PythiaMultiplier(WarmupMultiplier):
    """Warm-up, then ``gamma ** (number of steps <= update)`` (MMF's ``pythia`` scheduler)."""

    def __init__(
        self,
        *,
        steps: Sequence[int] = (),
        gamma: float = 0.1,
        warmup_updates: int = 0,
        warmup_factor: float = 0.2,
    ) -> None:
        super().__init__(warmup_updates=warmup_updates, warmup_factor=warmup_factor)
        steps = [int(s) for s in steps]
        if steps != sorted(steps):
            raise ValueError(f"pythia: steps must be increasing, got {steps}")
        if gamma <= 0:
            raise ValueError(f"pythia: gamma must be > 0, got {gamma}")
        self.steps = steps
        self.gamma = float(gamma)

    def after(self, update: int) -> float:
        return float(self.gamma ** bisect.bisect_right(self.steps, update))


class _DecayMultiplier(WarmupMultiplier):
    """Warm-up, then a decay from 1 to ``min_lr_ratio`` reached at ``max_updates``."""

    def __init__(
        self,
        *,
        max_updates: int,
        min_lr_ratio: float = 0.0,
        warmup_updates: int = 0,
        warmup_factor: float = 0.2,
    ) -> None:
        super().__init__(warmup_updates=warmup_updates, warmup_factor=warmup_factor)
        if max_updates <= 0:
            raise ValueError(f"max_updates must be > 0, got {max_updates}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.max_updates = int(max_updates)
        self.min_lr_ratio = float(min_lr_ratio)

    def progress(self, update: int) -> float:
        """Fraction of the decay done at ``update``, in [0, 1]."""
        span = max(1, self.max_updates - self.warmup_updates)
        return min(1.0, max(0.0, (update - self.warmup_updates) / span))

    def shape(self, progress: float) -> float:
        """Decay shape: 1 at progress 0, 0 at progress 1."""
        raise NotImplementedError

    def after(self, update: int) -> float:
        m = self.min_lr_ratio
        return m + (1.0 - m) * self.shape(self.progress(update))


class CosineMultiplier(_DecayMultiplier):
    """Warm-up, then half-cosine decay to ``min_lr_ratio`` at ``max_updates``."""

    def shape(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))


class LinearMultiplier(_DecayMultiplier):
    """Warm-up, then linear decay to ``min_lr_ratio`` at ``max_updates``."""

    def shape(self, progress: float) -> float:
        return 1.0 - progress


@SCHEDULERS.register("pythia")
def pythia_scheduler(
    optimizer: Optimizer,
    *,
    max_updates: int,
    steps: Sequence[int] = (),
    gamma: float = 0.1,
    warmup_updates: int = 0,
    warmup_factor: float = 0.2,
) -> LambdaLR:
    """MMF's ``pythia`` schedule: warm-up, then ×``gamma`` at each update in ``steps``."""
    del max_updates  # the steps are absolute update numbers
    return LambdaLR(optimizer, PythiaMultiplier(
        steps=steps, gamma=gamma, warmup_updates=warmup_updates, warmup_factor=warmup_factor))


@SCHEDULERS.register("warmup_cosine")
def warmup_cosine_scheduler(
    optimizer: Optimizer,
    *,
    max_updates: int,
    min_lr_ratio: float = 0.0,
    warmup_updates: int = 0,
    warmup_factor: float = 0.2,
) -> LambdaLR:
    """Warm-up, then cosine decay to ``lr * min_lr_ratio`` at ``max_updates``."""
    return LambdaLR(optimizer, CosineMultiplier(
        max_updates=max_updates, min_lr_ratio=min_lr_ratio, warmup_updates=warmup_updates,
        warmup_factor=warmup_factor))


@SCHEDULERS.register("warmup_linear")
def warmup_linear_scheduler(
    optimizer: Optimizer,
    *,
    max_updates: int,
    min_lr_ratio: float = 0.0,
    warmup_updates: int = 0,
    warmup_factor: float = 0.2,
) -> LambdaLR:
    """Warm-up, then linear decay to ``lr * min_lr_ratio`` at ``max_updates``."""
    return LambdaLR(optimizer, LinearMultiplier(
        max_updates=max_updates, min_lr_ratio=min_lr_ratio, warmup_updates=warmup_updates,
        warmup_factor=warmup_factor))


@SCHEDULERS.register("constant")
def constant_scheduler(
    optimizer: Optimizer,
    *,
    max_updates: int,
    warmup_updates: int = 0,
    warmup_factor: float = 0.2,
) -> LambdaLR:
    """Warm-up, then the base learning rate."""
    del max_updates
    return LambdaLR(optimizer, ConstantMultiplier(
        warmup_updates=warmup_updates, warmup_factor=warmup_factor))


def build_scheduler(
    optimizer: Optimizer, cfg_scheduler: Mapping[str, Any], *, max_updates: int
) -> LRScheduler:
    """The LR scheduler described by ``cfg_scheduler`` (see the module docstring).

    Step it once per update (after ``optimizer.step()``). An unknown ``type`` raises KeyError
    listing the registered names; the other keys go to the factory as keyword arguments.
    """
    cfg = _plain(cfg_scheduler)
    factory = SCHEDULERS.get(str(cfg.pop("type", "pythia")))
    scheduler: LRScheduler = factory(optimizer, max_updates=int(max_updates), **cfg)
    return scheduler


# --------------------------------------------------------------------------- clipping


def _grads(model_or_params: nn.Module | Tensor | Iterable[Tensor]) -> list[Tensor]:
    params: Iterator[Tensor] | Iterable[Tensor]
    if isinstance(model_or_params, nn.Module):
        params = model_or_params.parameters()
    elif isinstance(model_or_params, Tensor):
        params = [model_or_params]
    else:
        params = model_or_params
    return [p for p in params if p.grad is not None]


def clip_gradients(
    model_or_params: nn.Module | Tensor | Iterable[Tensor],
    max_norm: float | None,
    *,
    norm_type: float = 2.0,
) -> float:
    """Clip the gradients' total norm to ``max_norm`` in place; return the pre-clip norm.

    ``max_norm`` None or 0 only measures. Parameters without a gradient are ignored (0.0 when
    none has one). The returned norm may be inf/nan: a caller should then skip the update.
    """
    params = _grads(model_or_params)
    if not params:
        return 0.0
    if not max_norm:
        grads = [p.grad for p in params if p.grad is not None]
        return float(torch.nn.utils.get_total_norm(grads, norm_type=norm_type))
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0 or None, got {max_norm}")
    return float(torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type))

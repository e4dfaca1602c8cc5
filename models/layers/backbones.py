"""Convolutional backbones (image -> grid feature map) with no network access.

``resnet_trunk(name)`` builds a torchvision ResNet with ``weights=None`` and drops ``avgpool``
and ``fc``: input (B, 3, H, W) float (ImageNet-normalized), output (B, C, ceil(H/32),
ceil(W/32)) with C = ``RESNET_CHANNELS[name]`` (e.g. 448 px -> 14x14, 64 px -> 2x2).

The trunk is an ``nn.Sequential`` whose children keep torchvision's names (``conv1``, ``bn1``,
``relu``, ``maxpool``, ``layer1`` .. ``layer4``), so a torchvision ResNet state dict loads into
it directly (its ``fc.*`` keys are ignored). Pretrained weights are never downloaded: pass
``weights_path``, a local file holding a torchvision state dict (``.pth``/``.pt`` read with
``torch.load(weights_only=True)``, or ``.safetensors``). A checkpoint that wraps the state
dict under ``"state_dict"`` or ``"model"``, or prefixes keys with ``"module."``, is accepted.

``shapes_cnn`` is no ResNet: a small trunk of our own for synthetic data trained from scratch
on a CPU (see ``_SMALL_LAYERS``); it takes ``weights_path`` too.

``weights_path`` may also be a whole model's state dict or a release directory of ours (its
``model.safetensors``): the trunk's keys (``...grid_encoder.trunk.*``) are taken from it, so
one model's trained backbone starts another (e.g. a captioner's for a VQA model).

This module is a leaf: it imports nothing from ``training`` or ``service``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

__all__ = ["RESNET_CHANNELS", "load_state_dict_file", "resnet_trunk", "trunk_state"]

#: Output channels of each supported trunk. ``<name>_l3`` stops after ``layer3``: stride 16
#: instead of 32 (a 4x4 grid at 64 px rather than 2x2), for small inputs such as ShapesWorld.
RESNET_CHANNELS: dict[str, int] = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "resnet18_l3": 256,
    "resnet34_l3": 256,
    "resnet50_l3": 1024,
    "shapes_cnn": 128,
}

#: Small trunks trained from scratch, for synthetic data on a CPU budget (no pretrained
#: weights exist for them; ``weights_path`` loads one of our own state dicts). ``shapes_cnn``:
#: five 3x3 conv-BN-ReLU layers (``conv0`` .. ``conv4``), widths 32, 32, 64, 128, 128, strides
#: 2, 2, 1, 2, 1 - stride 8, an 8x8 grid at 64 px, a quarter of the training time of
#: ``resnet18_l3`` per 64 px image (which gives a 4x4 grid).
_SMALL_LAYERS: dict[str, list[tuple[int, int]]] = {  # (out channels, stride) per layer
    "shapes_cnn": [(32, 2), (32, 2), (64, 1), (128, 2), (128, 1)],
}

_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnet152": torchvision.models.resnet152,
}

#: The weights file of a release directory (``models.release.MODEL_FILE``; this module is a
#: leaf and does not import it).
RELEASE_WEIGHTS = "model.safetensors"
#: In a whole model's state dict the trunk's keys sit under this (``ResNetGridEncoder.trunk``,
#: possibly below a parent module's name).
TRUNK_KEY = "grid_encoder.trunk."

_TRUNK_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def resnet_trunk(name: str, *, weights_path: str | Path | None = None) -> nn.Module:
    """A torchvision ResNet without ``avgpool``/``fc``, in eval mode.

    ``(B, 3, H, W) -> (B, RESNET_CHANNELS[name], H/32, W/32)`` (``H/16`` for ``<name>_l3``,
    which stops after ``layer3`` and loads a full ResNet's state dict minus ``layer4``).
    Randomly initialised unless
    ``weights_path`` (a local torchvision state dict) is given. Raises ``ValueError`` for an
    unknown ``name`` or a state dict that does not fit (the message names the file),
    ``FileNotFoundError`` when ``weights_path`` does not exist.
    """
    if name in _SMALL_LAYERS:
        trunk = _small_trunk(_SMALL_LAYERS[name])
        if weights_path is not None:
            _load_into(trunk, load_state_dict_file(weights_path), Path(weights_path), name)
        return trunk.eval()
    base, _, cut = name.partition("_")
    if base not in _BUILDERS or name not in RESNET_CHANNELS:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(sorted(RESNET_CHANNELS))}")
    full = _BUILDERS[base](weights=None)
    children = _TRUNK_CHILDREN[:-1] if cut == "l3" else _TRUNK_CHILDREN
    trunk = nn.Sequential(OrderedDict((child, getattr(full, child)) for child in children))
    if weights_path is not None:
        state = load_state_dict_file(weights_path)
        _load_into(trunk, state, Path(weights_path), name)
    return trunk.eval()


def _small_trunk(layers: list[tuple[int, int]]) -> nn.Sequential:
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 3
    for i, (out, stride) in enumerate(layers):
        blocks[f"conv{i}"] = nn.Sequential(
            nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out), nn.ReLU(inplace=True))
        channels = out
    return nn.Sequential(blocks)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local ``.safetensors`` or torch (``.pth``/``.pt``/...) file.

    Torch files are read with ``weights_only=True`` (no arbitrary code runs). A dict wrapping
    the state dict under ``"state_dict"``/``"model"`` is unwrapped and a ``"module."`` key prefix
    (DataParallel) is stripped. A directory is read as one of our releases: its
    ``model.safetensors`` (never a pickle). Errors name the file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / RELEASE_WEIGHTS
        if not p.is_file():
            raise FileNotFoundError(f"weights directory {p.parent} holds no {RELEASE_WEIGHTS} "
                                    f"(expected a release directory)")
    if not p.is_file():
        raise FileNotFoundError(f"weights file not found: {p}")
    obj: Any
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ValueError(f"could not read weights file {p}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"weights file {p} does not hold a state dict (got {type(obj).__name__})")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ValueError(
                f"weights file {p} does not hold a state dict: entry {key!r} is "
                f"{type(value).__name__}, not a tensor"
            )
        state[key.removeprefix("module.")] = value
    return state


def trunk_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trunk's part of a whole model's state dict (any model of ours with a raw-image
    backbone: keys ``...grid_encoder.trunk.<name>``), keys relative to the trunk; a state dict
    with no such keys (a torchvision or trunk state dict) is returned as it is."""
    prefixes = {k[: k.index(TRUNK_KEY) + len(TRUNK_KEY)] for k in state if TRUNK_KEY in k}
    if not prefixes:
        return dict(state)
    if len(prefixes) > 1:
        raise ValueError(f"the state dict holds several backbones: {sorted(prefixes)}")
    prefix = prefixes.pop()
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _load_into(trunk: nn.Module, state: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    try:
        state = trunk_state(state)
    except ValueError as exc:
        raise ValueError(f"weights file {path}: {exc}") from None
    # The classifier (and layer4 for an ``_l3`` trunk) of a full ResNet state dict are unused.
    kept = {child for child, _ in trunk.named_children()}
    state = {k: v for k, v in state.items()
             if not k.startswith("fc.") and not (k.startswith("layer4.") and "layer4" not in kept)}
    expected = trunk.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if items:
                shown = ", ".join(items[:5]) + (f", ... ({len(items)} in all)"
                                                if len(items) > 5 else "")
                parts.append(f"{label}: {shown}")
        raise ValueError(
            f"weights file {path} does not fit backbone {name!r} "
            f"(expected a torchvision {name} state dict); " + "; ".join(parts)
        )
    trunk.load_state_dict(state, strict=True)

"""training.optim: parameter groups, optimizers, LR schedules, resumption, clipping."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from training.optim import (
    PUBLISHED_RECIPE,
    build_optimizer,
    build_scheduler,
    clip_gradients,
    current_lrs,
    param_groups,
)
from training.registry import OPTIMIZERS, SCHEDULERS


class TinyModel(nn.Module):
    """A backbone (conv + batch norm), a frozen embedding, a LayerNorm and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.frozen = nn.Embedding(10, 4)
        self.frozen.weight.requires_grad_(False)
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2, bias=False)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return self.backbone.parameters()

    def forward(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x = self.backbone(image).mean(dim=(2, 3)) + self.frozen(tokens)
        return self.head(self.norm(self.proj(x)))


def _loss(model: TinyModel) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, 5, 5, generator=g)
    tokens = torch.tensor([1, 2])
    return model(image, tokens).pow(2).sum()


def _one_param_optimizer(lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(cfg: dict, max_updates: int, updates: list[int], lr: float = 1.0) -> list[float]:
    """The LR in force at each update number in ``updates`` (scheduler stepped once per update)."""
    opt = _one_param_optimizer(lr)
    sched = build_scheduler(opt, cfg, max_updates=max_updates)
    out, u = [], 0
    for target in sorted(updates):
        while u < target:
            opt.step()
            sched.step()
            u += 1
        out.append(opt.param_groups[0]["lr"])
    return out


# --------------------------------------------------------------------------- schedules


def test_pythia_warmup_and_steps():
    cfg = {"type": "pythia", "warmup_updates": 1000, "warmup_factor": 0.2, "gamma": 0.1,
           "steps": [15000, 18000, 20000, 21000]}
    points = [0, 500, 999, 1000, 14999, 15000, 17999, 18000, 20000, 21000, 21999]
    got = _lrs(cfg, 22000, points, lr=0.01)
    want = [0.01 * 0.2, 0.01 * 0.6, 0.01 * (0.2 + 0.8 * 999 / 1000), 0.01, 0.01,
            0.001, 0.001, 1e-4, 1e-5, 1e-6, 1e-6]
    assert got == pytest.approx(want, rel=1e-9)


def test_warmup_cosine_endpoints_and_midpoint():
    cfg = {"type": "warmup_cosine", "warmup_updates": 100, "min_lr_ratio": 0.1}
    got = _lrs(cfg, 1100, [0, 50, 100, 600, 1100, 1150])
    assert got == pytest.approx([0.2, 0.6, 1.0, 0.55, 0.1, 0.1])
    quarter = _lrs(cfg, 1100, [350])[0]
    assert quarter == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_warmup_linear_endpoints_and_midpoint():
    cfg = {"type": "warmup_linear", "warmup_updates": 10, "warmup_factor": 0.0}
    assert _lrs(cfg, 110, [0, 5, 10, 60, 85, 110, 200]) == pytest.approx(
        [0.0, 0.5, 1.0, 0.5, 0.25, 0.0, 0.0])


def test_constant_and_no_warmup():
    cfg = {"type": "constant", "warmup_updates": 4}
    assert _lrs(cfg, 10, [0, 2, 4, 9]) == pytest.approx([0.2, 0.6, 1.0, 1.0])
    assert _lrs({"type": "constant"}, 10, [0, 5]) == pytest.approx([1.0, 1.0])
    assert _lrs({"type": "warmup_cosine"}, 10, [0, 5, 10]) == pytest.approx([1.0, 0.5, 0.0])


def test_schedule_scales_every_group():
    model = TinyModel()
    opt = build_optimizer(model, {"type": "sgd", "lr": 0.5, "backbone_lr_scale": 0.1})
    build_scheduler(opt, {"type": "constant", "warmup_updates": 10}, max_updates=10)
    lrs = current_lrs(opt)
    assert lrs["default"] == pytest.approx(0.1)
    assert lrs["backbone"] == pytest.approx(0.01)


@pytest.mark.parametrize("cfg", [
    {"type": "pythia", "warmup_updates": 5, "steps": [8, 12], "gamma": 0.5},
    {"type": "warmup_cosine", "warmup_updates": 5, "min_lr_ratio": 0.05},
    {"type": "warmup_linear", "warmup_updates": 5},
    {"type": "constant", "warmup_updates": 5},
])
def test_state_dict_round_trip_continues_identically(cfg):
    def make():
        model = TinyModel()
        opt = build_optimizer(model, {"type": "adamax", "lr": 0.01})
        return opt, build_scheduler(opt, cfg, max_updates=20)

    opt, sched = make()
    reference = []
    for _ in range(20):
        opt.step()
        sched.step()
        reference.append([g["lr"] for g in opt.param_groups])

    opt, sched = make()
    for _ in range(7):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)

    opt2, sched2 = make()
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    resumed = []
    for _ in range(13):
        opt2.step()
        sched2.step()
        resumed.append([g["lr"] for g in opt2.param_groups])
    assert resumed == reference[7:]


def test_scheduler_accepts_omegaconf_and_rejects_bad_values():
    cfg = OmegaConf.create({"type": "pythia", "steps": [3, 6]})
    opt = _one_param_optimizer()
    build_scheduler(opt, cfg, max_updates=10)
    with pytest.raises(ValueError, match="increasing"):
        build_scheduler(_one_param_optimizer(), {"steps": [6, 3]}, max_updates=10)


# --------------------------------------------------------------------------- param groups


def test_param_groups_split():
    model = TinyModel()
    groups = param_groups(model, lr=0.01, weight_decay=0.05, backbone_lr_scale=0.1)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "default", "no_decay"}

    def ids(name):
        return {id(p) for p in by_name[name]["params"]}

    assert ids("backbone") == {id(model.backbone[0].weight)}
    assert ids("backbone_no_decay") == {id(model.backbone[0].bias), id(model.backbone[1].weight),
                                        id(model.backbone[1].bias)}
    assert ids("default") == {id(model.proj.weight), id(model.head.weight)}
    assert ids("no_decay") == {id(model.proj.bias), id(model.norm.weight), id(model.norm.bias)}
    assert by_name["backbone"]["lr"] == pytest.approx(0.001)
    assert by_name["backbone_no_decay"]["lr"] == pytest.approx(0.001)
    assert by_name["default"]["lr"] == by_name["no_decay"]["lr"] == 0.01
    assert by_name["backbone"]["weight_decay"] == by_name["default"]["weight_decay"] == 0.05
    assert by_name["no_decay"]["weight_decay"] == by_name["backbone_no_decay"]["weight_decay"] == 0

    placed = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(placed) == sorted(trainable)  # each trainable parameter exactly once
    assert id(model.frozen.weight) not in placed


def test_param_groups_without_backbone_or_norm_split():
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    model[0].bias.requires_grad_(False)
    groups = param_groups(model, lr=1.0, weight_decay=0.1, no_decay_norm_and_bias=False)
    assert [g["name"] for g in groups] == ["default"]
    assert len(groups[0]["params"]) == 3  # weight, norm weight, norm bias; frozen bias skipped


def test_shared_parameter_placed_once():
    model = TinyModel()
    model.tied = nn.Linear(4, 2, bias=False)
    model.tied.weight = model.head.weight
    groups = param_groups(model, lr=1.0)
    placed = [id(p) for g in groups for p in g["params"]]
    assert len(placed) == len(set(placed)) == sum(1 for p in model.parameters()
                                                  if p.requires_grad)


def test_frozen_backbone_with_zero_scale_stays_put():
    model = TinyModel()
    before = [p.detach().clone() for p in model.backbone.parameters()]
    opt = build_optimizer(model, {"type": "adamw", "lr": 0.1, "weight_decay": 0.1,
                                  "backbone_lr_scale": 0.0})
    _loss(model).backward()
    opt.step()
    for b, p in zip(before, model.backbone.parameters()):
        assert torch.equal(b, p)


# --------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("cfg", [
    {"type": "adamax", "lr": 0.01},
    {"type": "adamw", "lr": 0.01, "weight_decay": 0.01, "betas": [0.9, 0.98]},
    {"type": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True},
    {"type": "sgd", "lr": 0.01, "momentum": 0.0},
])
def test_each_optimizer_steps(cfg):
    torch.manual_seed(0)
    model = TinyModel()
    opt = build_optimizer(model, OmegaConf.create(cfg))
    assert isinstance(opt, torch.optim.Optimizer)
    assert {g["name"] for g in opt.param_groups} >= {"default", "backbone"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    _loss(model).backward()
    opt.step()
    after = dict(model.named_parameters())
    assert not torch.equal(before["proj.weight"], after["proj.weight"])
    assert not torch.equal(before["backbone.0.weight"], after["backbone.0.weight"])
    assert torch.equal(before["frozen.weight"], after["frozen.weight"])


def test_published_recipe_builds():
    model = TinyModel()
    opt = build_optimizer(model, PUBLISHED_RECIPE["optimizer"])
    assert isinstance(opt, torch.optim.Adamax)
    sched = build_scheduler(opt, PUBLISHED_RECIPE["scheduler"],
                            max_updates=PUBLISHED_RECIPE["max_updates"])
    assert current_lrs(opt)["default"] == pytest.approx(0.002)
    assert sched.get_last_lr()[0] > 0


def test_unknown_names_list_known():
    with pytest.raises(KeyError) as err:
        build_optimizer(TinyModel(), {"type": "adamx"})
    for name in ("adamax", "adamw", "sgd"):
        assert name in str(err.value)
    assert set(OPTIMIZERS.names()) >= {"adamax", "adamw", "sgd"}

    with pytest.raises(KeyError) as err:
        build_scheduler(_one_param_optimizer(), {"type": "cosine"}, max_updates=10)
    for name in ("pythia", "warmup_cosine", "warmup_linear", "constant"):
        assert name in str(err.value)
    assert set(SCHEDULERS.names()) >= {"pythia", "warmup_cosine", "warmup_linear", "constant"}


def test_unexpected_factory_kwarg_is_named():
    with pytest.raises(TypeError, match="momentum"):
        build_optimizer(TinyModel(), {"type": "adamax", "momentum": 0.9})


# --------------------------------------------------------------------------- clipping


def test_clip_gradients_returns_pre_clip_norm_and_clips():
    model = TinyModel()
    _loss(model).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    expected = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    assert expected > 0.25

    assert clip_gradients(model, None) == pytest.approx(expected, rel=1e-5)
    assert clip_gradients(model.parameters(), 0) == pytest.approx(expected, rel=1e-5)

    norm = clip_gradients(model, 0.25)
    assert norm == pytest.approx(expected, rel=1e-5)
    post = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()
    assert post <= 0.25 + 1e-6
    assert post == pytest.approx(0.25, rel=1e-4)


def test_clip_gradients_without_grads_and_below_threshold():
    model = TinyModel()
    assert clip_gradients(model, 1.0) == 0.0
    p = nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([0.0, 3.0, 4.0])
    assert clip_gradients([p], 10.0) == pytest.approx(5.0)
    assert torch.equal(p.grad, torch.tensor([0.0, 3.0, 4.0]))  # under the limit: untouched
    assert clip_gradients(p, 1.0) == pytest.approx(5.0)
    assert p.grad.norm().item() == pytest.approx(1.0, rel=1e-5)

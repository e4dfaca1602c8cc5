"""The training loop behind ``training/train.py`` (see that module for the command lines).

``Trainer(cfg).train()`` runs one process's part of a run: it works the same in a single
process and under ``torchrun`` (one process per rank, ``torch.distributed`` initialized by
``setup_distributed``).

Batch arithmetic: ``trainer.batch_size`` is global, summed over ranks and accumulation steps,
so one update sees ``batch_size`` samples whatever the world size:

    micro_batch (per rank, per forward) = batch_size / (world_size * accumulate)

and it must divide exactly. Each rank's loss is the mean over its micro-batch, divided by
``accumulate``; DDP averages the gradients over ranks, so the update is the gradient of the mean
loss over the global batch, as one process with the whole batch would compute it.

Run directory (``run.save_dir``)::

    config.yaml             the resolved configuration (training.config.save_resolved)
    metrics.jsonl           one JSON object per log/eval event (appended on resume)
    tensorboard/            SummaryWriter events
    checkpoints/current.pt  every trainer.checkpoint_every updates, at the end and on SIGTERM
    checkpoints/best.pt     the best evaluation so far by trainer.early_stop.metric
    release/                models.save_pretrained of the final (or best) weights

A checkpoint holds the model, optimizer, scheduler, GradScaler, update count, sampler
position (batches consumed in the epoch) and every rank's RNG states (python, numpy, torch,
CUDA), so ``run.resume=true`` continues exactly where the checkpoint was written. It holds
only tensors, numbers, strings and containers of them, and is read with
``torch.load(weights_only=True)``: loading a checkpoint never runs pickled code.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader

from models import MODELS, save_pretrained
from models.base import BaseModel
from models.processors import ImageTransform
from models.release import load as load_release
from models.release import unwrap_model
from training import dist as tdist
from training.config import ConfigError, save_resolved
from training.data import (
    BaseDataset,
    MultiTaskBatchSampler,
    ShardSampler,
    build_dataset,
    build_multitask_processors,
    build_processors,
    collate,
    processors_for,
)
from training.evaluation.evaluators import Evaluator, evaluators_for
from training.optim import build_optimizer, build_scheduler, clip_gradients, current_lrs
from training.predict import TRAINING_FIELDS, output_decoder
from training.registry import SCHEDULERS
from training.self_critical import SelfCritical

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
METRICS_NAME = "metrics.jsonl"
CHECKPOINT_VERSION = 1


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message says what to change."""


# -- setup -------------------------------------------------------------------------------------
def resolve_train_device(requested: str) -> torch.device:
    """The device of this rank: ``cuda:$LOCAL_RANK`` under torchrun with CUDA."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    requested = str(requested)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(requested)
    except RuntimeError:
        raise ConfigError(f"trainer.device: {requested!r} is not auto, cpu, cuda or cuda:N") \
            from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise TrainError(f"trainer.device={requested!r} requested but CUDA is not available "
                             "here; use trainer.device=cpu (or auto)")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise TrainError(f"trainer.device: {dev} but only {torch.cuda.device_count()} "
                             "CUDA device(s) are visible")
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ConfigError(f"trainer.device: unsupported device type {dev.type!r}")
    return dev


def setup_distributed(dev: torch.device) -> bool:
    """Initialize the process group when torchrun launched several ranks; True if we did."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or tdist.is_distributed():
        return False
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"backend": backend, "timeout": timedelta(minutes=30)}
    if dev.type == "cuda":
        kwargs["device_id"] = dev
    dist.init_process_group(**kwargs)
    return True


def micro_batch_size(batch_size: int, world_size: int, accumulate: int) -> int:
    """Per-rank, per-forward batch (see the module docstring); ConfigError if not exact."""
    if accumulate < 1:
        raise ConfigError(f"trainer.accumulate must be >= 1, got {accumulate}")
    if batch_size < 1 or batch_size % (world_size * accumulate):
        raise ConfigError(
            f"trainer.batch_size={batch_size} must be a positive multiple of world_size "
            f"({world_size}) x trainer.accumulate ({accumulate}) = {world_size * accumulate}")
    return batch_size // (world_size * accumulate)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state() -> dict[str, Any]:
    """Every RNG's state in types ``torch.load(weights_only=True)`` accepts (tensors, lists,
    numbers, strings): the numpy key array travels as a tensor."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss_next],
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                  int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((str(kind), np.asarray(keys, dtype=np.uint32), int(pos),
                         int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _scheduler_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The scheduler keys the chosen type takes: defaults.yaml declares the union of all
    schedules' keys (``steps`` means nothing to ``warmup_cosine``), so drop the others."""
    plain = dict(_plain(cfg))
    name = str(plain.get("type", "pythia"))
    try:
        factory = SCHEDULERS.get(name)
    except KeyError as exc:
        raise ConfigError(f"scheduler.type: {exc.args[0] if exc.args else exc}") from None
    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return plain
    return {k: v for k, v in plain.items() if k == "type" or k in params}


def _to_device(batch: dict[str, Any], dev: torch.device) -> dict[str, Any]:
    return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()}


def _atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary sibling, then rename: a crash never leaves a torn checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# -- the trainer -------------------------------------------------------------------------------
class Trainer:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        tc = cfg.trainer
        if cfg.model.name is None:
            raise ConfigError("model.name is not set; known: " + ", ".join(MODELS.names()))
        names = [str(n) for n in (cfg.datasets or {})]
        if not names:
            raise ConfigError("no dataset configured: add e.g. datasets.vqa2.data_dir=DIR")
        self.family = cast(type[BaseModel], MODELS.get(str(cfg.model.name)))
        if len(names) > 1 and not self.family.multi_dataset:
            multi = [n for n in MODELS.names() if getattr(MODELS.get(n), "multi_dataset", False)]
            raise ConfigError(
                f"model.name={cfg.model.name!r} trains on one dataset but {len(names)} are "
                f"configured ({', '.join(names)}); keep one, or use a multi-task family "
                f"({', '.join(multi)})")
        self.dataset_names = names
        if str(tc.precision) not in PRECISIONS:
            raise ConfigError(f"trainer.precision={tc.precision!r}; use one of "
                              f"{', '.join(PRECISIONS)}")
        for key in ("max_updates", "eval_every", "log_every", "checkpoint_every"):
            if int(tc[key]) < 1:
                raise ConfigError(f"trainer.{key} must be >= 1, got {tc[key]}")
        early = tc.early_stop
        if str(early.mode) not in ("max", "min"):
            raise ConfigError(f"trainer.early_stop.mode={early.mode!r}; use max or min")
        if int(early.patience) < 0:
            raise ConfigError("trainer.early_stop.patience must be >= 0")

        self.device = resolve_train_device(str(tc.device))
        self.owns_group = setup_distributed(self.device)
        try:
            self._setup()
        except BaseException:
            # A rank that cannot start (bad config, missing data) must not leave the process
            # group behind: the launcher then sees an error, not a hang at the next collective.
            if self.owns_group and dist.is_initialized():
                dist.destroy_process_group()
            raise

    def _setup(self) -> None:
        cfg, tc = self.cfg, self.cfg.trainer
        self.rank, self.world = tdist.get_rank(), tdist.get_world_size()
        self.accumulate = int(tc.accumulate)
        self.micro_batch = micro_batch_size(int(tc.batch_size), self.world, self.accumulate)
        self.max_updates = int(tc.max_updates)
        self.amp_dtype = PRECISIONS[str(tc.precision)]
        if self.amp_dtype is torch.bfloat16 and self.device.type == "cuda" \
                and not torch.cuda.is_bf16_supported():
            raise TrainError("trainer.precision=bf16 but this GPU has no bf16; use fp16")
        self.save_dir = Path(str(cfg.run.save_dir))
        self.ckpt_dir = self.save_dir / "checkpoints"
        self._stop_signal: int | None = None

        # Same seed on every rank before the model is built, so every rank starts from the
        # same weights (DDP broadcasts rank 0's anyway); per-rank streams after that.
        seed_everything(int(tc.seed))
        self._build_data()
        self.model: BaseModel = self.family.from_config(cfg.model, self.processors
                                                        ).to(self.device)
        if cfg.run.get("init_from"):
            self._init_from(Path(str(cfg.run.init_from)))
        if bool(tc.self_critical.enabled):
            self._attach_self_critical()
        self.ddp: nn.Module = self.model
        if self.world > 1:
            # A multi-task batch uses one route (a VQA batch leaves the caption decoder
            # idle), so DDP must look for unused parameters whatever the config says.
            self.ddp = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(tc.find_unused_parameters)
                or bool(self.family.multi_dataset))
        try:
            self.optimizer = build_optimizer(self.model, cfg.optimizer)
            self.scheduler = build_scheduler(self.optimizer, _scheduler_cfg(cfg.scheduler),
                                             max_updates=self.max_updates)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"optimizer/scheduler: {exc}") from None
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.amp_dtype is torch.float16)
        seed_everything(int(tc.seed) + self.rank)

        self.update = 0
        self.epoch = 0
        self.consumed = 0  # batches of the current epoch already used (the sampler position)
        self.best: float | None = None
        self.best_update = -1
        self.bad_evals = 0
        self.last_metrics: dict[str, float] = {}

    def _init_from(self, path: Path) -> None:
        """Start from a release's weights (``run.init_from``): same family, same processors."""
        try:
            release, processors = load_release(path)
        except (OSError, ValueError) as exc:  # ReleaseError is a ValueError
            raise ConfigError(f"run.init_from={str(path)!r}: {exc}") from None
        if release.family != self.family.family:
            raise ConfigError(f"run.init_from={str(path)!r} is a {release.family!r} release "
                              f"but model.name is {self.cfg.model.name!r}")
        for name, ours in self.processors.items():
            theirs = processors.get(name)
            if theirs is not None and hasattr(ours, "to_dict") \
                    and theirs.to_dict() != ours.to_dict():
                raise ConfigError(f"run.init_from={str(path)!r}: its processor {name!r} differs "
                                  f"from the one this run's data builds (another dataset or "
                                  f"vocabulary settings?)")
        try:
            self.model.load_state_dict(release.state_dict())
        except RuntimeError as exc:  # shapes: other hyper-parameters than model.*
            raise ConfigError(f"run.init_from={str(path)!r} does not fit model.*: {exc}"
                              ) from None

    def _attach_self_critical(self) -> None:
        """``trainer.self_critical``: the reward over the training references (captioners)."""
        sc = self.cfg.trainer.self_critical
        if not hasattr(self.model, "self_critical") or len(self.train_sets) != 1:
            raise ConfigError(f"trainer.self_critical.enabled: model.name={self.cfg.model.name!r}"
                              " does not train by self-critical sampling (use butd on one "
                              "captioning dataset)")
        captions = getattr(self.train_sets[0], "captions", None)
        if not isinstance(captions, Mapping):
            raise ConfigError(f"trainer.self_critical.enabled: dataset {self.dataset_names[0]!r}"
                              " has no reference captions")
        try:
            critic = SelfCritical(captions.values(), self.processors["caption_vocab"],
                                  samples=int(sc.samples), max_length=int(sc.max_length))
        except ValueError as exc:
            raise ConfigError(f"trainer.self_critical: {exc}") from None
        cast(Any, self.model).self_critical = critic  # a plain attribute (not a module)

    # -- data ---------------------------------------------------------------------------------
    def _build_data(self) -> None:
        """Processors, training sets (in ``datasets`` order) and validation sets.

        A multi-dataset family gets one processor set over all datasets (shared vocabulary,
        an answer space per VQA dataset: ``build_multitask_processors``); each reader then
        sees its own view of it (``processors_for``).
        """
        cfg = self.cfg
        self.train_sets: list[BaseDataset] = []
        self.val: dict[str, BaseDataset] = {}
        name = self.dataset_names[0]
        try:
            if self.family.multi_dataset:
                self.processors: dict[str, Any] = build_multitask_processors(
                    cfg, self.dataset_names)
            else:
                self.processors = build_processors(cfg, name)
            for name in self.dataset_names:
                d = cfg.datasets[name]
                procs = processors_for(self.processors, name)
                self.train_sets.append(build_dataset(cfg, name, str(d.get("train_split",
                                                                          "train")), procs))
                val_split = d.get("val_split", "val")
                if val_split:
                    self.val[name] = build_dataset(cfg, name, str(val_split), procs)
        except (OSError, ValueError) as exc:  # DatasetError is a ValueError
            raise TrainError(f"dataset {name!r} (data_dir "
                             f"{cfg.datasets[name].get('data_dir')!r}): {exc}") from exc
        self.concat: ConcatDataset[Any] = ConcatDataset(self.train_sets)
        try:
            self.sampler = MultiTaskBatchSampler(
                [len(d) for d in self.train_sets], batch_size=self.micro_batch,
                strategy=str(cfg.data.sampling), temperature=float(cfg.data.temperature),
                weights=[float(cfg.datasets[n].get("sampling_weight", 1.0))
                         for n in self.dataset_names],
                seed=int(cfg.trainer.seed), rank=self.rank, world_size=self.world)
        except ValueError as exc:
            raise ConfigError(f"data.sampling / datasets.<name>.sampling_weight "
                              f"({self.dataset_names}): {exc}") from exc
        if len(self.sampler) == 0:
            raise ConfigError(f"the micro-batch ({self.micro_batch}) is larger than the training "
                              f"data of a rank: lower trainer.batch_size")
        pin = cfg.data.pin_memory
        self.pin_memory = self.device.type == "cuda" if str(pin) == "auto" else bool(pin)
        self.num_workers = int(cfg.data.num_workers)

    def _train_batches(self) -> Iterator[dict[str, Any]]:
        """Training batches forever, epoch after epoch, from the sampler position on.

        The loader's own generator (seeded by seed, epoch and rank) gives the worker seeds, so
        creating an iterator never draws from the global RNG: a resumed run, which creates one
        mid-epoch, keeps the same RNG stream as an uninterrupted one.
        """
        while True:
            self.sampler.set_epoch(self.epoch)
            self.sampler.load_state_dict({"epoch": self.epoch, "position": self.consumed})
            g = torch.Generator().manual_seed(
                int(self.cfg.trainer.seed) * 1_000_003 + self.epoch * 1009 + self.rank)
            loader = DataLoader(self.concat, batch_sampler=self.sampler, collate_fn=collate,
                                num_workers=self.num_workers, pin_memory=self.pin_memory,
                                generator=g, persistent_workers=False)
            for batch in loader:
                self.consumed += 1
                yield batch
            self.epoch += 1
            self.consumed = 0

    # -- one update ---------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _step(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        """One optimizer update over ``accumulate`` micro-batches; returns its statistics."""
        self.ddp.train()
        losses: dict[str, list[float]] = {}
        rewards: dict[str, list[float]] = {}
        total = 0.0
        for i in range(self.accumulate):
            batch = _to_device(next(batches), self.device)
            # Gradients are all-reduced only on the last micro-batch: the earlier ones
            # accumulate locally under no_sync (the sum is what the reduction then averages).
            last = i == self.accumulate - 1
            sync = contextlib.nullcontext() if last or self.world == 1 \
                else self.ddp.no_sync()  # type: ignore[operator]
            with sync:
                with self._autocast():
                    out = self.ddp(batch)
                if "loss" not in out:
                    raise TrainError(f"the model returned no 'loss' for a {batch['dataset']} "
                                     "batch: does the split have targets?")
                loss = out["loss"].float() / self.accumulate
                self.scaler.scale(loss).backward()
            value = float(loss.detach()) * self.accumulate
            losses.setdefault(str(batch["dataset"]), []).append(value)
            if "reward" in out:  # self-critical training: the samples' mean reward
                rewards.setdefault(str(batch["dataset"]), []).append(float(out["reward"]))
            total += value / self.accumulate
        self.scaler.unscale_(self.optimizer)
        norm = clip_gradients(self.model, self.cfg.trainer.clip_grad_norm)
        skipped = not math.isfinite(norm)
        if skipped and self.amp_dtype is not torch.float16:
            # fp16: the scaler skips the step and lowers its scale; otherwise skip it here.
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update += 1
        return {"loss": total, "grad_norm": norm, "skipped": skipped,
                "tasks": {k: sum(v) / len(v) for k, v in losses.items()},
                "rewards": {k: sum(v) / len(v) for k, v in rewards.items()}}

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Metrics ``<dataset>/<metric>`` (and ``<dataset>/loss``) over every val split.

        Same result on every rank (the evaluators gather). The global RNG state is restored
        afterwards, so evaluating never changes the training stream (exact resume relies on it).
        """
        state = rng_state()
        self.model.eval()
        metrics: dict[str, float] = {}
        try:
            for name, ds in self.val.items():
                metrics.update(self._evaluate_one(name, ds))
        finally:
            set_rng_state(state)
            self.model.train()
        return metrics

    def _evaluate_one(self, name: str, ds: BaseDataset) -> dict[str, float]:
        evaluators: list[Evaluator] = list(evaluators_for(name))
        for ev in evaluators:
            ev.reset()
        loader = DataLoader(ds, batch_size=self.micro_batch, collate_fn=collate,
                            sampler=ShardSampler(len(ds), rank=self.rank, world_size=self.world),
                            num_workers=self.num_workers, pin_memory=self.pin_memory)
        val_split = str(self.cfg.datasets[name].get("val_split", "val"))
        # Reuse the prediction path's decoding (argmax over the answer space, OCR copy,
        # beam search) so the validation numbers are those a release would score.
        decode = output_decoder(self.model, self.processors, name, val_split, 1, 20)
        loss_sum, loss_n = 0.0, 0
        with torch.inference_mode(), self._autocast():
            for raw in loader:
                batch = _to_device(raw, self.device)
                batch["dataset"] = name
                out = self.model(batch)
                if "loss" in out:
                    n = len(next(v for v in batch.values() if isinstance(v, torch.Tensor)))
                    loss_sum += float(out["loss"].float()) * n
                    loss_n += n
                outputs: dict[str, Any] = dict(out)
                if name != "visdial":
                    stripped = {k: v for k, v in batch.items() if k not in TRAINING_FIELDS}
                    rows = decode(stripped)
                    key = "caption" if name == "coco" else "answer"
                    outputs[key] = [r[key] for r in rows]
                for ev in evaluators:
                    ev.process(raw, outputs)
        metrics: dict[str, float] = {}
        for ev in evaluators:
            metrics.update({f"{name}/{k}": float(v) for k, v in ev.evaluate().items()})
        totals = tdist.all_gather_object((loss_sum, loss_n))
        n_all = sum(n for _, n in totals)
        if n_all:
            metrics[f"{name}/loss"] = sum(s for s, _ in totals) / n_all
        return metrics

    def _improved(self, metrics: Mapping[str, float]) -> bool:
        """Update the early-stopping state with an evaluation; True if it is the best so far."""
        key = self.cfg.trainer.early_stop.metric
        if key is None:
            return False
        if key not in metrics:
            raise ConfigError(f"trainer.early_stop.metric={key!r} is not among the evaluation "
                              f"metrics: {', '.join(sorted(metrics))}")
        value = float(metrics[key])
        better = self.best is None or (value > self.best if self.cfg.trainer.early_stop.mode
                                       == "max" else value < self.best)
        if better:
            self.best, self.best_update, self.bad_evals = value, self.update, 0
        else:
            self.bad_evals += 1
        return better

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        # Every rank's RNG states travel to rank 0 (a collective: all ranks call this).
        rngs = tdist.all_gather_object(rng_state())
        return {
            "version": CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "update": self.update,
            "sampler": {"epoch": self.epoch, "position": self.consumed},
            "rng": rngs,
            "early_stop": {"best": self.best, "best_update": self.best_update,
                           "bad_evals": self.bad_evals},
            "world_size": self.world,
            "config": OmegaConf.to_container(self.cfg, resolve=True),
        }

    def save_checkpoint(self, name: str, state: dict[str, Any] | None = None) -> None:
        """Collective: every rank calls it, rank 0 writes ``checkpoints/<name>.pt``."""
        state = state if state is not None else self.state_dict()
        if self.rank == 0:
            _atomic_save(state, self.ckpt_dir / f"{name}.pt")
        if self.world > 1:
            dist.barrier()

    def load_checkpoint(self, path: Path) -> None:
        # Tensors, numbers, strings and containers only: nothing is unpickled beyond those.
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.update = int(state["update"])
        self.epoch = int(state["sampler"]["epoch"])
        self.consumed = int(state["sampler"]["position"])
        early = state["early_stop"]
        self.best, self.best_update = early["best"], int(early["best_update"])
        self.bad_evals = int(early["bad_evals"])
        rngs = state["rng"]
        if len(rngs) != self.world:
            self.log({"event": "resume_warning", "message": f"checkpoint from {len(rngs)} "
                      f"rank(s), now {self.world}: RNG streams and data order are not exact"})
        set_rng_state(rngs[self.rank % len(rngs)])

    # -- logging ------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        """One JSON line (rank 0) and the numeric fields to TensorBoard."""
        if self.rank != 0:
            return
        record = {"update": self.update, "time": round(time.time(), 3), **record}
        with (self.save_dir / METRICS_NAME).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) \
                        and k not in ("update", "time"):
                    self.writer.add_scalar(k, v, self.update)
            self.writer.flush()

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1:
            return values
        out: dict[str, list[float]] = {}
        for part in tdist.all_gather_object(values):
            for k, v in part.items():
                out.setdefault(k, []).append(v)
        return {k: sum(v) / len(v) for k, v in out.items()}

    # -- signals ------------------------------------------------------------------------------
    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop after the current update, writing ``current.pt`` first (the SIGTERM path)."""
        self._stop_signal = signum

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.request_stop(signum)

    # -- the run ------------------------------------------------------------------------------
    def train(self) -> dict[str, Any]:
        """Train to ``trainer.max_updates`` (or an early stop, or SIGTERM); returns a summary
        ``{"update", "stopped", "metrics", "best", "release"}``."""
        self.writer: Any = None
        if self.rank == 0:
            save_resolved(self.cfg, self.save_dir)
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.save_dir / "tensorboard"))
        current = self.ckpt_dir / "current.pt"
        if bool(self.cfg.run.resume) and current.is_file():
            self.load_checkpoint(current)
            self.log({"event": "resume", "from": str(current)})
        elif self.rank == 0 and (self.save_dir / METRICS_NAME).exists():
            (self.save_dir / METRICS_NAME).unlink()  # a fresh run: a fresh log
        old = signal.getsignal(signal.SIGTERM)
        in_main = True
        try:
            signal.signal(signal.SIGTERM, self._on_signal)
        except ValueError:  # not the main thread: no handler (the caller manages signals)
            in_main = False
        try:
            return self._loop()
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, old)
            if self.writer is not None:
                self.writer.close()
            if self.owns_group and dist.is_initialized():
                dist.destroy_process_group()

    def _loop(self) -> dict[str, Any]:
        tc = self.cfg.trainer
        from tqdm import tqdm

        bar = tqdm(total=self.max_updates, initial=self.update, unit="update",
                   disable=self.rank != 0, dynamic_ncols=True, file=sys.stderr)
        batches = self._train_batches()
        window: dict[str, list[float]] = {}
        stopped = "max_updates"
        t0 = time.perf_counter()
        while self.update < self.max_updates:
            stats = self._step(batches)
            bar.update(1)
            window.setdefault("loss", []).append(stats["loss"])
            window.setdefault("grad_norm", []).append(stats["grad_norm"])
            for task, value in stats["tasks"].items():
                window.setdefault(f"loss/{task}", []).append(value)
            for task, value in stats["rewards"].items():
                window.setdefault(f"reward/{task}", []).append(value)
            if stats["skipped"]:
                self.log({"event": "skipped_update", "grad_norm": stats["grad_norm"]})
            last = self.update == self.max_updates
            if self.update % int(tc.log_every) == 0 or last:
                means = self._mean_over_ranks({k: sum(v) / len(v) for k, v in window.items()})
                window = {}
                lrs = {f"lr/{k}": v for k, v in current_lrs(self.optimizer).items()}
                rate = round(self.update / max(time.perf_counter() - t0, 1e-9), 3)
                self.log({"event": "train", **means, **lrs, "updates_per_s": rate})
                bar.set_postfix(loss=f"{means['loss']:.4f}")
            # A signal is seen by this rank only; agree on it so every rank stops together.
            stop_now = any(s is not None for s in tdist.all_gather_object(self._stop_signal)) \
                if self.world > 1 else self._stop_signal is not None
            if stop_now:
                self.save_checkpoint("current")
                stopped = "signal"
                self.log({"event": "stopped", "reason": "signal", "signal": self._stop_signal})
                break
            # Evaluate before the periodic checkpoint of the same update, so that checkpoint
            # holds this evaluation's early-stopping state (a resume never re-runs it).
            early_stop = False
            if self.update % int(tc.eval_every) == 0 or last:
                metrics = self.evaluate()
                self.last_metrics = metrics
                improved = self._improved(metrics)
                self.log({"event": "eval", **metrics})
                if improved:
                    self.save_checkpoint("best")
                patience = int(tc.early_stop.patience)
                early_stop = bool(patience) and self.bad_evals >= patience
            if self.update % int(tc.checkpoint_every) == 0 or last or early_stop:
                self.save_checkpoint("current")
            if early_stop:
                stopped = "early_stop"
                self.log({"event": "stopped", "reason": "early_stop",
                          "best_update": self.best_update, "best": self.best})
                break
        bar.close()
        if stopped == "signal":
            return {"update": self.update, "stopped": stopped, "metrics": self.last_metrics,
                    "best": self.best, "release": None}
        return self._finish(stopped)

    def _finish(self, stopped: str) -> dict[str, Any]:
        """Restore the best weights (when a metric selects them) and export the release."""
        metrics: dict[str, Any] = dict(self.last_metrics)
        best_path = self.ckpt_dir / "best.pt"
        if self.cfg.trainer.early_stop.metric is not None and best_path.is_file():
            state = torch.load(best_path, map_location="cpu", weights_only=True)
            self.model.load_state_dict(state["model"])
            metrics = {"best_update": self.best_update, "best": self.best}
            self.log({"event": "restored_best", "best_update": self.best_update})
        release = self.save_dir / "release"
        if self.rank == 0:
            processors = {**self.processors,
                          "image_transform": ImageTransform(size=int(self.cfg.model.image_size))}
            save_pretrained(unwrap_model(self.model), release, processors=processors,
                            metrics={**self.last_metrics, **metrics, "update": self.update},
                            overwrite=True)
        if self.world > 1:
            dist.barrier()
        self.log({"event": "done", "stopped": stopped, "release": str(release)})
        return {"update": self.update, "stopped": stopped, "metrics": self.last_metrics,
                "best": self.best, "release": str(release)}

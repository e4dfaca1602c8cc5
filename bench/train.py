"""Training benchmark: the shipped ShapesWorld configs trained through the real trainer, each
scored against its target. Prints one JSON object on stdout (progress goes to stderr).

    .venv/bin/python bench/train.py [--only pythia,lorra,butd,visdial,ban,overhead,multitask]
        [--data-dir /tmp/pythia-shapes] [--train-images 20000] [--runs-dir DIR] [--out FILE]
        [--beam-size 3]
        [--overhead-updates 300] [--overhead-repeats 2] [--threads N]
        [--set RUN:KEY=VALUE ...] [--reuse]

ShapesWorld (``training.data.shapes.generate`` defaults - 500/500 val/test images, 128 px -
but ``--train-images``, default 20000, training images per dataset) is generated into
``--data-dir`` unless that world is already there. Every target trains
``training/configs/shapes/<config>.yaml`` as a subprocess::

    .venv/bin/python -m training.train --config training/configs/shapes/X.yaml \\
        datasets.<ds>.data_dir=DATA/<ds> run.save_dir=RUNS/<run>

and reads ``RUNS/<run>/metrics.jsonl``. Per target: the metric values, the target, ``met``,
wall-clock ``minutes`` (the whole subprocess: start-up, training, evaluation, release),
``train_samples_per_s`` (training phase only: log intervals with no evaluation in them) and
``curve`` (update -> metric at every evaluation, with the minutes since the run started).

Targets (val split, official metrics):

* ``pythia``: VQA v2 accuracy >= 85 in <= 20 min (per answer type and question type reported)
  over the frozen backbone of butd.yaml's captioner (pythia_pretrained.yaml, MMF's recipe of
  frozen features trained on other data; the captioner's minutes are reported beside), and
  pythia.yaml, whose backbone learns from the VQA loss alone, as the contrast;
* ``lorra``: TextVQA accuracy >= 60, and Pythia on TextVQA (pythia.yaml with its dataset
  swapped, no OCR copy) <= 20: the copy mechanism must be what answers;
* ``butd``: COCO CIDEr-D >= 1.5 with beam search (``training.predict --beam-size`` on the
  release, then ``training.evaluate``; the trainer's own evaluation decodes greedily), after
  BUTD's two stages: cross-entropy (butd.yaml), then self-critical training from its release
  (butd_scst.yaml, ``run.init_from``); the cross-entropy release is scored too;
* ``visdial``: MRR >= 0.6 and NDCG >= 0.5 (and ``form_blind_mrr``: the best MRR a model
  could reach that knew each answer's meaning but not the answerer's wording);
* ``ban``: VQA v2 accuracy, reported (no target);
* ``overhead``: training-phase samples/s of ``training.train`` (pythia.yaml, no val split) over
  a bare PyTorch loop (the same model, data, batch size and optimizer class; forward,
  backward, step) measured in this run; target ratio >= 0.90;
* ``multitask``: ``training/configs/shapes/multitask_pretrained.yaml`` (all five datasets, one
  run, over butd.yaml's frozen trunk as Pythia's); each dataset's metric within 3 points of
  the single-task model's metric from this same run (accuracies are in points already,
  CIDEr-D / MRR / NDCG count x100), where present. VizWiz's single-task model is
  pythia_pretrained.yaml with its dataset swapped to vizwiz (run ``pythia_vizwiz``, trained
  by this target).

``--set RUN:KEY=VALUE`` adds a trainer override to one run (runs: pythia,
pythia_pretrained, lorra, pythia_textvqa, butd, butd_scst, visdial, ban, pythia_vizwiz,
multitask), e.g.
``--set pythia:trainer.max_updates=500`` for a quick check; the shipped configs are what a
run without ``--set`` measures.
``--reuse`` keeps a run whose directory under ``--runs-dir`` holds a finished run (its
metrics log ends with ``done`` and its release exists) instead of training it again, e.g. to
re-score releases or to run only butd's second stage again (delete RUNS/butd_scst first).
``--threads N`` sets ``OMP_NUM_THREADS`` for every run (and this process's bare loop). By
default torch uses one thread per core; on a machine shared with other CPU-bound processes
two threads on two cores stall each other badly (5-10x slower updates), one thread does not.

Adding a target is one entry in ``TARGETS``: a function ``(Bench) -> dict``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = ROOT / "training" / "configs" / "shapes"
DATASETS = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")
VAL_SPLITS = {"vqa2": "val2014", "coco": "val2014", "textvqa": "val", "vizwiz": "val",
              "visdial": "val"}
# Training images per dataset. The generator's default (2000 images, 10,000 VQA questions)
# would be seen 10-20 times in a run's budget; with 20000 each question is seen about twice.
TRAIN_IMAGES = 20000
# The main metric of each dataset (as the trainer names it) and its multiplier to "points".
MAIN_METRICS: dict[str, list[tuple[str, float]]] = {
    "vqa2": [("vqa2/accuracy", 1.0)],
    "textvqa": [("textvqa/accuracy", 1.0)],
    "vizwiz": [("vizwiz/accuracy", 1.0)],
    "coco": [("coco/cider", 100.0)],
    "visdial": [("visdial/mrr", 100.0), ("visdial/ndcg", 100.0)],
}

def config_datasets(config: Path) -> list[str]:
    """The dataset names under ``datasets`` in a config file."""
    from omegaconf import DictConfig, OmegaConf

    cfg = OmegaConf.load(config)
    node = cfg.get("datasets") if isinstance(cfg, DictConfig) else None
    return [str(n) for n in node] if node else []


def log(msg: str) -> None:
    print(f"[bench/train {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def train_throughput(records: list[dict[str, Any]]) -> float | None:
    """Updates/s over consecutive ``train`` log records with no evaluation between them
    (start-up, evaluation and the first logging interval excluded)."""
    updates, seconds = 0, 0.0
    prev: dict[str, Any] | None = None
    for r in records:
        event = r.get("event")
        if event == "train":
            if prev is not None:
                updates += r["update"] - prev["update"]
                seconds += r["time"] - prev["time"]
            prev = r
        elif event in ("eval", "resume", "skipped_update"):
            prev = None if event != "skipped_update" else prev
    return updates / seconds if seconds > 0 else None


def eval_curve(records: list[dict[str, Any]], keys: list[str], t0: float) -> list[dict[str, Any]]:
    curve = []
    for r in records:
        if r.get("event") == "eval":
            point = {"update": r["update"], "minutes": round((r["time"] - t0) / 60, 2)}
            point.update({k: r[k] for k in keys if k in r})
            curve.append(point)
    return curve


class Bench:
    """Shared state of one benchmark run: paths, the interpreter, earlier targets' results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.data_dir: Path = args.data_dir.resolve()
        self.runs_dir: Path = args.runs_dir.resolve()
        self.python = str(ROOT / ".venv" / "bin" / "python") \
            if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
        self.beam_size: int = args.beam_size
        self.overhead_updates: int = args.overhead_updates
        self.overhead_repeats: int = args.overhead_repeats
        self.results: dict[str, dict[str, Any]] = {}
        self.reuse: bool = args.reuse
        # Runs trained by this process, by name: a run two targets need (butd's cross-entropy
        # stage: its release and Pythia's backbone) trains once.
        self.trained: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, list[str]] = {}
        for item in args.set or []:
            run, _, override = item.partition(":")
            self.extra.setdefault(run, []).append(override)

    # -- subprocesses ---------------------------------------------------------------------------
    def _run(self, cmd: list[str], log_path: Path) -> tuple[int, float, str]:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with log_path.open("w") as f:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=f, text=True,
                                  check=False)
        return proc.returncode, time.perf_counter() - start, proc.stdout

    def train(self, run: str, config: Path, overrides: Sequence[str] = (), *,
              datasets: list[str] | None = None) -> dict[str, Any]:
        """Train ``config`` into RUNS/<run>; returns rc, minutes, batch size, metrics records.
        A run this process already trained is returned as it was."""
        from omegaconf import OmegaConf

        if run in self.trained:
            return self.trained[run]

        names = datasets or config_datasets(config)
        run_dir = self.runs_dir / run
        cmd = [self.python, "-m", "training.train", "--config", str(config),
               *[f"datasets.{n}.data_dir={self.data_dir / n}" for n in names],
               f"run.save_dir={run_dir}", *overrides, *self.extra.get(run, [])]
        records = read_metrics(run_dir)
        if self.reuse and records and records[-1].get("event") == "done" \
                and (run_dir / "release" / "config.json").is_file():
            log(f"train {run}: reusing the finished run in {run_dir}")
            wall_start = records[0]["time"]
            rc, seconds, stdout = 0, records[-1]["time"] - wall_start, "(reused)"
        else:
            log(f"train {run}: {' '.join(cmd[2:])}")
            wall_start = time.time()
            rc, seconds, stdout = self._run(cmd, self.runs_dir / f"{run}.log")
            records = read_metrics(run_dir)
        resolved = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() \
            else None
        batch = int(resolved.trainer.batch_size) if resolved is not None else None
        ups = train_throughput(records)
        log(f"train {run}: rc={rc} in {seconds / 60:.1f} min")
        out: dict[str, Any] = {
            "run_dir": str(run_dir), "rc": rc, "minutes": round(seconds / 60, 2),
            "updates": max((r["update"] for r in records), default=0),
            "batch_size": batch,
            "train_updates_per_s": round(ups, 3) if ups else None,
            "train_samples_per_s": round(ups * batch, 1) if ups and batch else None,
            "_records": records, "_t0": wall_start,
        }
        if rc != 0:
            out["error"] = (self.runs_dir / f"{run}.log").read_text()[-2000:]
        else:
            out["summary_stdout"] = stdout.strip()[-200:]
        self.trained[run] = out
        return out

    def predict_evaluate(self, release: Path, dataset: str, tag: str,
                         extra: Sequence[str] = ()) -> dict[str, Any]:
        """``training.predict`` on the val split, then ``training.evaluate`` on the result."""
        split = VAL_SPLITS[dataset]
        result = self.runs_dir / f"{tag}.{dataset}.val.json"
        pcmd = [self.python, "-m", "training.predict", "--model", str(release), "--dataset",
                dataset, "--data-dir", str(self.data_dir / dataset), "--split", split,
                "--out", str(result), "--num-workers", "0", "--device", "cpu", "--no-progress",
                *extra]
        rc, seconds, _ = self._run(pcmd, self.runs_dir / f"{tag}.predict.log")
        if rc != 0:
            return {"error": "predict failed: "
                    + (self.runs_dir / f"{tag}.predict.log").read_text()[-1500:]}
        ecmd = [self.python, "-m", "training.evaluate", "--dataset", dataset, "--data-dir",
                str(self.data_dir / dataset), "--split", split, "--predictions", str(result)]
        erc, eseconds, stdout = self._run(ecmd, self.runs_dir / f"{tag}.evaluate.log")
        if erc != 0:
            return {"error": "evaluate failed: "
                    + (self.runs_dir / f"{tag}.evaluate.log").read_text()[-1500:]}
        return {"metrics": json.loads(stdout), "predict_minutes": round(seconds / 60, 2),
                "evaluate_minutes": round(eseconds / 60, 2)}


def _final_eval(run: dict[str, Any]) -> dict[str, float]:
    evals = [r for r in run["_records"] if r.get("event") == "eval"]
    if not evals:
        return {}
    return {k: v for k, v in evals[-1].items() if k not in ("update", "time", "event")}


def _public(run: dict[str, Any], keys: list[str]) -> dict[str, Any]:
    """A run's reportable fields plus its eval curve over ``keys``."""
    out = {k: v for k, v in run.items() if not k.startswith("_")}
    out["curve"] = eval_curve(run["_records"], keys, run["_t0"])
    return out


def _check(value: float | None, op: str, goal: float) -> bool:
    if value is None:
        return False
    return value >= goal if op == ">=" else value <= goal


# -- targets -----------------------------------------------------------------------------------
def target_pythia(b: Bench) -> dict[str, Any]:
    """MMF's Pythia never trains its visual backbone: it reads features of a detector trained
    on other data. Here the backbone is BUTD's, trained on the COCO captions (butd.yaml, the
    run the butd target scores too; its minutes are reported as ``backbone_pretraining``),
    frozen (pythia_pretrained.yaml). The contrast: pythia.yaml, the backbone learnt from the
    VQA loss alone."""
    xe = b.train("butd", CONFIGS / "butd.yaml")
    out: dict[str, Any] = {"metric": "vqa2/accuracy", "value": None,
                           "target": ">= 85 in <= 20 min", "met": False,
                           "backbone_pretraining": {"run": "butd", "minutes": xe["minutes"],
                                                    "rc": xe["rc"]}}
    if xe["rc"] == 0:
        run = b.train("pythia_pretrained", CONFIGS / "pythia_pretrained.yaml",
                      [f"model.backbone_weights={Path(xe['run_dir']) / 'release'}"])
        m = _final_eval(run)
        acc = m.get("vqa2/accuracy")
        out.update(value=acc, met=_check(acc, ">=", 85.0) and run["minutes"] <= 20.0,
                   per_type={k.removeprefix("vqa2/accuracy/"): v for k, v in m.items()
                             if k.startswith("vqa2/accuracy/")},
                   **_public(run, ["vqa2/accuracy"]))
    scratch = b.train("pythia", CONFIGS / "pythia.yaml")
    out["from_scratch"] = {"value": _final_eval(scratch).get("vqa2/accuracy"),
                           **_public(scratch, ["vqa2/accuracy"])}
    return out


def swapped_config(b: Bench, base: str, run: str, dataset: str,
                   budget_of: str | None = None) -> Path:
    """RUNS/<run>.yaml: shapes/<base>.yaml trained on ``dataset`` instead of its own, with
    the max_updates / eval_every of shapes/<budget_of>.yaml when given."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / f"{base}.yaml")
    cfg.datasets = {dataset: {"data_dir": f"data/shapes/{dataset}"}}
    if budget_of is not None:
        trainer = OmegaConf.load(CONFIGS / f"{budget_of}.yaml").trainer
        cfg.trainer.max_updates = int(trainer.max_updates)
        cfg.trainer.eval_every = int(trainer.eval_every)
    b.runs_dir.mkdir(parents=True, exist_ok=True)
    derived = b.runs_dir / f"{run}.yaml"
    OmegaConf.save(cfg, derived)
    return derived


def target_lorra(b: Bench) -> dict[str, Any]:
    run = b.train("lorra", CONFIGS / "lorra.yaml")
    acc = _final_eval(run).get("textvqa/accuracy")
    # The contrast: pythia.yaml with its dataset swapped to textvqa (no OCR copy: it learns
    # the answer-space part of the copy targets), on LoRRA's budget.
    contrast = b.train("pythia_textvqa",
                       swapped_config(b, "pythia", "pythia_textvqa", "textvqa", "lorra"))
    pacc = _final_eval(contrast).get("textvqa/accuracy")
    return {"metric": "textvqa/accuracy", "value": acc, "target": ">= 60",
            "pythia_textvqa_accuracy": pacc, "pythia_textvqa_target": "<= 20",
            "met": _check(acc, ">=", 60.0) and _check(pacc, "<=", 20.0),
            **_public(run, ["textvqa/accuracy"]),
            "pythia_textvqa": _public(contrast, ["textvqa/accuracy"])}


def target_butd(b: Bench) -> dict[str, Any]:
    """BUTD's recipe: cross-entropy, then self-critical training from that release; both
    releases scored with beam search (the target reads the second)."""
    beam = ["--beam-size", str(b.beam_size)]
    xe = b.train("butd", CONFIGS / "butd.yaml")
    first: dict[str, Any] = {"greedy_cider": _final_eval(xe).get("coco/cider")}
    out: dict[str, Any] = {"metric": f"cider (beam {b.beam_size}, after self-critical training)",
                           "target": ">= 1.5", "value": None, "met": False}
    if xe["rc"] == 0:
        scored = b.predict_evaluate(Path(xe["run_dir"]) / "release", "coco", "butd", beam)
        first.update(scored)
        first["value"] = scored.get("metrics", {}).get("cider")
        scst = b.train("butd_scst", CONFIGS / "butd_scst.yaml",
                       [f"run.init_from={Path(xe['run_dir']) / 'release'}"])
        out["greedy_cider"] = _final_eval(scst).get("coco/cider")
        if scst["rc"] == 0:
            scored = b.predict_evaluate(Path(scst["run_dir"]) / "release", "coco", "butd_scst",
                                        beam)
            out.update(scored)
            out["value"] = scored.get("metrics", {}).get("cider")
            out["met"] = _check(out["value"], ">=", 1.5)
        out.update(_public(scst, ["coco/cider", "coco/bleu4"]))
    out["cross_entropy"] = {**first, **_public(xe, ["coco/cider", "coco/bleu4"])}
    return out


def form_blind_mrr(visdial_dir: Path) -> float:
    """The best expected MRR on val of a model that knows every answer's meaning but not its
    wording: the k options that mean the ground truth (unhedged) can only be ranked 1..k in
    some order, worth (1 + 1/2 + ... + 1/k) / k. What the answerer's style (read from the
    history) must add to go beyond it."""
    from training.data.shapes import relevance

    data = json.loads((visdial_dir / "visdial_1.0_val.json").read_text())["data"]
    answers, total, n = data["answers"], 0.0, 0
    for dialog in data["dialogs"]:
        for r in dialog["dialog"]:
            gt = answers[r["answer"]]
            k = sum(relevance(answers[o], gt) == 1.0 for o in r["answer_options"])
            total += sum(1.0 / i for i in range(1, k + 1)) / k
            n += 1
    return total / n


def target_visdial(b: Bench) -> dict[str, Any]:
    run = b.train("visdial", CONFIGS / "visdial.yaml")
    m = _final_eval(run)
    mrr, ndcg = m.get("visdial/mrr"), m.get("visdial/ndcg")
    return {"metric": "visdial/mrr, visdial/ndcg", "value": {"mrr": mrr, "ndcg": ndcg,
            **{k.removeprefix("visdial/"): v for k, v in m.items()}},
            "form_blind_mrr": round(form_blind_mrr(b.data_dir / "visdial"), 4),
            "target": "mrr >= 0.6 and ndcg >= 0.5",
            "met": _check(mrr, ">=", 0.6) and _check(ndcg, ">=", 0.5),
            **_public(run, ["visdial/mrr", "visdial/ndcg", "visdial/r@1"])}


def target_ban(b: Bench) -> dict[str, Any]:
    run = b.train("ban", CONFIGS / "ban.yaml")
    m = _final_eval(run)
    return {"metric": "vqa2/accuracy", "value": m.get("vqa2/accuracy"),
            "per_type": {k.removeprefix("vqa2/accuracy/"): v for k, v in m.items()
                         if k.startswith("vqa2/accuracy/")},
            "target": None, "met": None, **_public(run, ["vqa2/accuracy"])}


def bare_loop_samples_per_s(overrides: list[str], updates: int, skip: int) -> float:
    """Samples/s of a plain loop (forward under the config's autocast precision, backward,
    step) on the model and data the trainer builds from pythia.yaml; the first ``skip`` updates
    are not timed (as the trainer's first logging interval is not)."""
    import torch
    from torch.utils.data import DataLoader

    from training.config import load_config
    from training.data import collate
    from training.trainer import PRECISIONS, Trainer, seed_everything

    cfg = load_config(CONFIGS / "pythia.yaml", overrides)
    trainer = Trainer(cfg)
    model = trainer.model.train()
    opt_cls = {"adamax": torch.optim.Adamax, "adamw": torch.optim.AdamW,
               "sgd": torch.optim.SGD}[str(cfg.optimizer.type)]
    opt = opt_cls(model.parameters(), lr=float(cfg.optimizer.lr))
    seed_everything(int(cfg.trainer.seed))
    loader = DataLoader(trainer.concat, batch_size=int(cfg.trainer.batch_size), shuffle=True,
                        drop_last=True, collate_fn=collate, num_workers=int(cfg.data.num_workers))
    amp = PRECISIONS[str(cfg.trainer.precision)]
    done, start = 0, 0.0
    while done < updates:
        for batch in loader:
            if done == skip:
                start = time.perf_counter()
            with torch.autocast(trainer.device.type, dtype=amp, enabled=amp is not None):
                loss = model(batch)["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done >= updates:
                break
    seconds = time.perf_counter() - start
    return (updates - skip) * int(cfg.trainer.batch_size) / seconds


def target_overhead(b: Bench) -> dict[str, Any]:
    n = b.overhead_updates
    overrides = [f"datasets.vqa2.data_dir={b.data_dir / 'vqa2'}", f"trainer.max_updates={n}",
                 "trainer.log_every=10", f"trainer.eval_every={n}",
                 f"trainer.checkpoint_every={10 * n}", "datasets.vqa2.val_split=null"]
    trainer_rates, bare_rates, runs = [], [], []
    for i in range(b.overhead_repeats):
        run = b.train(f"overhead{i}", CONFIGS / "pythia.yaml", overrides[1:])
        runs.append({k: v for k, v in run.items() if not k.startswith("_")})
        if run["train_samples_per_s"]:
            trainer_rates.append(run["train_samples_per_s"])
        log(f"overhead: bare loop {i}")
        bare_rates.append(round(bare_loop_samples_per_s(overrides, n, 10), 1))
    best_trainer = max(trainer_rates, default=None)
    best_bare = max(bare_rates)
    ratio = round(best_trainer / best_bare, 3) if best_trainer else None
    return {"metric": "trainer samples/s / bare loop samples/s (best of each)",
            "value": ratio, "target": ">= 0.90", "met": _check(ratio, ">=", 0.90),
            "trainer_samples_per_s": trainer_rates, "bare_samples_per_s": bare_rates,
            "updates": n, "runs": runs}


# Single-task target whose result holds each dataset's single-task metric.
SINGLE_TASK_OF = {"vqa2": "pythia", "textvqa": "lorra", "vizwiz": "pythia_vizwiz",
                  "coco": "butd", "visdial": "visdial"}


def pythia_vizwiz(b: Bench, backbone: Path) -> dict[str, Any]:
    """VizWiz's single-task model: pythia_pretrained.yaml (over the same frozen trunk) with
    its dataset swapped to vizwiz, its budget unchanged."""
    derived = swapped_config(b, "pythia_pretrained", "pythia_vizwiz", "vizwiz")
    run = b.train("pythia_vizwiz", derived, [f"model.backbone_weights={backbone}"])
    acc = _final_eval(run).get("vizwiz/accuracy")
    return {"value": acc, **_public(run, ["vizwiz/accuracy"])}


def target_multitask(b: Bench) -> dict[str, Any]:
    """One run on every dataset of multitask_pretrained.yaml over the frozen trunk of
    butd.yaml's captioner (the run the pythia and butd targets share), each metric within
    3 points of the single-task model's (taken from this run's other targets, where they
    ran; VizWiz's is trained here)."""
    config = CONFIGS / "multitask_pretrained.yaml"
    xe = b.train("butd", CONFIGS / "butd.yaml")
    if xe["rc"] != 0:
        return {"error": "butd.yaml (the backbone) failed", "met": False}
    backbone = Path(xe["run_dir"]) / "release"
    names = config_datasets(config)
    singles = dict(b.results)  # target name -> result, as SINGLE_TASK_OF names them
    if "vizwiz" in names:
        singles["pythia_vizwiz"] = pythia_vizwiz(b, backbone)
    run = b.train("multitask", config, [f"model.backbone_weights={backbone}"], datasets=names)
    m = _final_eval(run)
    if "coco" in names and run["rc"] == 0:  # captions scored with beam search, as butd's
        scored = b.predict_evaluate(Path(run["run_dir"]) / "release", "coco", "multitask",
                                    ["--beam-size", str(b.beam_size)])
        if "metrics" in scored:
            m["coco/cider"] = scored["metrics"]["cider"]
    compare: dict[str, Any] = {}
    met = run["rc"] == 0
    for ds in names:
        single = singles.get(SINGLE_TASK_OF.get(ds, ""), {})
        for key, scale in MAIN_METRICS.get(ds, []):
            mine = m.get(key)
            ref = _single_value(single, key)
            row: dict[str, Any] = {"multitask": mine, "single_task": ref}
            if mine is not None and ref is not None:
                row["delta_points"] = round((mine - ref) * scale, 2)
                row["met"] = (ref - mine) * scale <= 3.0
                met = met and row["met"]
            else:
                row["met"] = None  # no single-task figure in this run to compare with
            compare[key] = row
    keys = [k for ds in names for k, _ in MAIN_METRICS.get(ds, [])]
    return {"metric": "per dataset: multitask - single task (points)", "value": compare,
            "target": "each within 3 points of the single-task model", "met": met,
            **_public(run, keys),
            **({"pythia_vizwiz": singles["pythia_vizwiz"]} if "pythia_vizwiz" in singles
               else {})}


def _single_value(result: dict[str, Any], key: str) -> float | None:
    if not result:
        return None
    if key == "coco/cider":  # the cross-entropy stage: the multi-task model is trained so
        return result.get("cross_entropy", result).get("value")
    if key.startswith("visdial/"):
        value = result.get("value") or {}
        return value.get(key.removeprefix("visdial/"))
    return result.get("value")


TARGETS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "pythia": target_pythia,
    "lorra": target_lorra,
    "butd": target_butd,
    "visdial": target_visdial,
    "ban": target_ban,
    "overhead": target_overhead,
    "multitask": target_multitask,  # after the single-task targets it compares against
}


def ensure_data(data_dir: Path, train_images: int) -> dict[str, Any]:
    """Generate ShapesWorld (the generator's defaults but ``train_images`` training images
    per dataset) unless that very world is already there."""
    from training.data.shapes import GENERATOR_VERSION, generate

    marker = data_dir / ".bench-generated"
    want = {"train_images": train_images, "generator_version": GENERATOR_VERSION}
    if marker.is_file() and all((data_dir / d).is_dir() for d in DATASETS):
        have = json.loads(marker.read_text())
        if all(have.get(k) == v for k, v in want.items()):
            return {"data_dir": str(data_dir), "generated": False, **have}

    log(f"generating ShapesWorld ({train_images} training images per dataset) into {data_dir}")
    summary = generate(data_dir, train_images=train_images)
    info = {**want, **{k: summary[k] for k in ("seed", "image_size", "images")}}
    marker.write_text(json.dumps(info))
    return {"data_dir": str(data_dir), "generated": True, "seconds": summary["seconds"], **info}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default=",".join(TARGETS),
                   help="comma-separated targets (default: all): " + ",".join(TARGETS))
    p.add_argument("--data-dir", type=Path, default=Path("/tmp/pythia-shapes"),
                   help="ShapesWorld root (generated there unless already present)")
    p.add_argument("--train-images", type=int, default=TRAIN_IMAGES,
                   help=f"training images per dataset (default {TRAIN_IMAGES}; the "
                   "generator's own default is 2000)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="run directories (default: DATA_DIR/../pythia-bench-runs)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    p.add_argument("--beam-size", type=int, default=3, help="butd/multitask caption beam")
    p.add_argument("--overhead-updates", type=int, default=300)
    p.add_argument("--overhead-repeats", type=int, default=2)
    p.add_argument("--set", action="append", metavar="RUN:KEY=VALUE",
                   help="a training override for one run (repeatable)")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs found in --runs-dir instead of training again")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the runs (default: torch's, one per core)")
    args = p.parse_args()
    if args.threads is not None:  # before torch is imported (the subprocesses inherit it)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        p.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    if args.runs_dir is None:
        args.runs_dir = args.data_dir.resolve().parent / "pythia-bench-runs"

    out: dict[str, Any] = {"cpus": os.cpu_count(),
                           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                           "set": args.set or [],
                           "data": ensure_data(args.data_dir.resolve(), args.train_images),
                           "targets": {}}
    bench = Bench(args)
    t0 = time.perf_counter()
    for name in TARGETS:  # table order: multitask compares against the ones before it
        if name not in names:
            continue
        log(f"target {name}")
        start = time.perf_counter()
        result = TARGETS[name](bench)
        result["target_minutes"] = round((time.perf_counter() - start) / 60, 2)
        bench.results[name] = result
        out["targets"][name] = result
        if args.out is not None:  # partial results survive an interrupted run
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(out, indent=1, default=str) + "\n")
    out["minutes"] = round((time.perf_counter() - t0) / 60, 2)
    out["met"] = {n: r.get("met") for n, r in out["targets"].items()}
    text = json.dumps(out, indent=1, default=str)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

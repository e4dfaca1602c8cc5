"""Predict a whole split with a release and write the EvalAI result file.

One process::

    python -m training.predict --model RELEASE_DIR --dataset vqa2 --data-dir DIR \\
        --split test-dev2015 --out results.json [--batch-size 64] [--num-workers 0] \\
        [--device auto|cpu|cuda] [--beam-size 1] [--max-length 20] [--no-progress]

Two processes (one per GPU on CUDA, or two CPU processes with gloo)::

    torchrun --standalone --nproc_per_node=2 -m training.predict --model RELEASE_DIR \\
        --dataset vqa2 --data-dir DIR --split val2014 --out results.json

Datasets and result rows (answers normalized by ``training.evaluation.evalai``):

* vqa2, textvqa: ``{"question_id", "answer"}`` (textvqa may copy an OCR token);
* vizwiz: ``{"image", "answer"}``;
* coco: ``{"image_id", "caption"}``, one caption per image (``--beam-size``, ``--max-length``);
* visdial: ``{"image_id", "round_id", "ranks"}`` for every round on train/val, the last round
  (the one with options) on test.

Splits: the readers' generic names (train/val/test, test-dev for vqa2) or the official ones
(``train2014``/``val2014``/``test2015``/``test-dev2015`` for vqa2, ``train2014``/``val2014``
for coco).

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK) every rank reads its part of the split through
``ShardSampler`` (no padding: each item exactly once) and appends its rows as JSON lines to
``<out>.rank<r>.jsonl`` as it goes (constant memory). After all ranks are done, rank 0 merges
the shards into the final JSON list (streamed into a temporary file, repeated keys dropped),
validates it against the split's expected keys, renames it into place, removes the shards and
prints ``{"out", "rows", "seconds"}``. Ranks must share the file system holding ``--out``.

Exit status 0 on success, 1 with ``error: ...`` on stderr (bad release, unknown dataset or
split, a task the model does not serve, CUDA requested but missing, an invalid result).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from models.base import BaseModel
from models.predictor import resolve_device
from models.processors.answers import UNK_ANSWER
from models.release import load
from training import dist as tdist
from training.config import load_config
from training.data import ShardSampler, build_dataset, collate, processors_for
from training.data.base import BaseDataset
from training.evaluation import evalai
from training.evaluation.visdial import scores_to_ranks
from training.registry import DATASETS

DATASET_NAMES = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")
# The model task a dataset needs (single-task families list their tasks in ``model.tasks``).
TASK_OF = {"vqa2": "vqa", "vizwiz": "vqa", "textvqa": "textvqa", "coco": "caption",
           "visdial": "dialog"}
OFFICIAL_SPLITS = {
    "vqa2": {"train2014": "train", "val2014": "val", "test2015": "test",
             "test-dev2015": "test-dev"},
    "coco": {"train2014": "train", "val2014": "val"},
}
# Fields only training needs: dropped so the forward pass computes no loss.
TRAINING_FIELDS = ("targets", "gt_index", "answer_ids", "answer_length", "caption_ids",
                   "caption_length", "gt_relevance", "relevance_round")

Row = dict[str, Any]


class PredictError(ValueError):
    """A request that cannot be served; the message names the problem."""


# -- public API ------------------------------------------------------------------------------
def predict(
    model_dir: str | os.PathLike[str],
    dataset: str,
    data_dir: str | os.PathLike[str],
    split: str,
    out: str | os.PathLike[str],
    *,
    batch_size: int = 64,
    device: str = "auto",
    beam_size: int = 1,
    max_length: int = 20,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Predict ``split`` of ``dataset`` with the release ``model_dir`` into the EvalAI file
    ``out``; returns ``{"out", "rows", "seconds"}`` (rows: the merged file's rows on rank 0,
    this rank's rows elsewhere). Under torchrun, every rank calls it. Raises ``PredictError``
    (or the reader's/release's ``ValueError``) naming the problem."""
    start = time.perf_counter()
    if dataset not in DATASET_NAMES:
        raise PredictError(f"unknown dataset {dataset!r}; known: {', '.join(DATASET_NAMES)}")
    if batch_size <= 0 or num_workers < 0:
        raise PredictError("--batch-size must be positive and --num-workers >= 0")
    if not 1 <= beam_size <= 32 or not 1 <= max_length <= 100:
        raise PredictError("--beam-size must be in 1..32 and --max-length in 1..100")
    split = _generic_split(dataset, split)
    out_path = Path(out)

    dev, owned_group = _setup_distributed(device)
    rank, world = tdist.get_rank(), tdist.get_world_size()
    shard = _shard_path(out_path, rank)
    error: str | None = None
    ds: BaseDataset | None = None
    local_rows = 0
    try:
        try:
            model, processors = load(model_dir, device=dev)
            _check_serves(model, dataset)
            ds = _build_dataset(dataset, data_dir, split, processors)
            local_rows = _predict_shard(model, processors, ds, dataset, split, shard, dev,
                                        batch_size=batch_size, num_workers=num_workers,
                                        beam_size=beam_size, max_length=max_length,
                                        progress=progress and rank == 0, rank=rank,
                                        world=world)
        except Exception as exc:  # reported to every rank below, then re-raised here
            if world == 1:
                raise
            error = f"rank {rank}: {exc}"
        # The gather is the barrier: every shard is complete once it returns.
        errors = [e for e in tdist.all_gather_object(error) if e]
        if errors:
            _remove(shard)
            raise PredictError(errors[0])
        if rank != 0:
            return {"out": str(out_path), "rows": local_rows,
                    "seconds": round(time.perf_counter() - start, 3)}
        assert ds is not None
        shards = [_shard_path(out_path, r) for r in range(world)]
        try:
            rows = _merge(shards, out_path, dataset, _expected_keys(ds, dataset, data_dir, split),
                          num_options=int(getattr(ds, "O", 100)))
        finally:  # this run's shards, and any a run with more ranks left behind
            for s in {*shards, *out_path.parent.glob(f"{glob.escape(out_path.name)}.rank*.jsonl")}:
                _remove(s)
        return {"out": str(out_path), "rows": rows,
                "seconds": round(time.perf_counter() - start, 3)}
    finally:
        if owned_group and dist.is_initialized():
            dist.destroy_process_group()


# -- setup -----------------------------------------------------------------------------------
def _generic_split(dataset: str, split: str) -> str:
    split = OFFICIAL_SPLITS.get(dataset, {}).get(split, split)
    reader: Any = DATASETS.get(dataset)
    known = reader.splits
    if split not in known:
        official = sorted(OFFICIAL_SPLITS.get(dataset, {}))
        raise PredictError(f"{dataset} has no split {split!r}; known splits: "
                           f"{', '.join([*sorted(known), *official])}")
    return split


def _setup_distributed(device: str) -> tuple[torch.device, bool]:
    """The device of this rank, and whether this call created the process group (from the
    torchrun environment: gloo on CPU, nccl on CUDA with ``cuda:$LOCAL_RANK``)."""
    try:
        dev = resolve_device(device)
    except RuntimeError as exc:
        raise PredictError(str(exc)) from None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world <= 1 or tdist.is_distributed():
        return dev, False
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(hours=2))
    return dev, True


def _check_serves(model: BaseModel, dataset: str) -> None:
    route = getattr(model, "route", None)  # the multi-task model routes per dataset
    if isinstance(route, dict):
        if dataset not in route:
            raise PredictError(f"this {model.family!r} release does not serve dataset "
                               f"{dataset!r} (it serves {sorted(route)})")
    elif TASK_OF[dataset] not in model.tasks:
        raise PredictError(f"this {model.family!r} release serves {list(model.tasks)}, not "
                           f"{TASK_OF[dataset]!r} (needed for {dataset})")
    if getattr(model, "grid_encoder", "absent") is None:
        raise PredictError(f"this {model.family!r} release was trained on precomputed features "
                           "only (no image backbone); predict reads raw images")


def _build_dataset(dataset: str, data_dir: str | os.PathLike[str], split: str,
                   processors: dict[str, Any]) -> BaseDataset:
    procs = processors_for(processors, dataset)
    transform = procs.get("image_transform")
    size = int(getattr(transform, "size", 224) or 224)
    cfg = load_config(None, [f"datasets.{dataset}.data_dir={data_dir}",
                             f"model.image_size={size}"])
    try:
        ds = build_dataset(cfg, dataset, split, procs)
    except KeyError as exc:
        raise PredictError(f"the release lacks processor {exc} needed to read {dataset} "
                           f"(it has {sorted(processors)})") from None
    visual = getattr(ds, "visual", None)
    if transform is not None and visual is not None:
        visual.transform = transform  # the release's exact normalization
    if dataset == "coco":
        ds.items = [(i, 0) for i in ds.image_ids]  # type: ignore[attr-defined]
    return ds


# -- prediction ------------------------------------------------------------------------------
def _predict_shard(model: BaseModel, processors: dict[str, Any], ds: BaseDataset,
                   dataset: str, split: str, shard: Path, dev: torch.device, *,
                   batch_size: int, num_workers: int, beam_size: int, max_length: int,
                   progress: bool, rank: int, world: int) -> int:
    """Predict this rank's part of ``ds`` into the JSON-lines ``shard``; returns its rows."""
    sampler = ShardSampler(len(ds), rank=rank, world_size=world)
    n = 0
    shard.parent.mkdir(parents=True, exist_ok=True)
    total = math.ceil(len(sampler) / batch_size)
    with shard.open("w", encoding="utf-8") as f, _progress(total, progress) as bar:
        for rows in predict_rows(model, processors, ds, dataset, split, sampler, dev,
                                 batch_size=batch_size, num_workers=num_workers,
                                 beam_size=beam_size, max_length=max_length):
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += len(rows)
            f.flush()
            bar(1)
    return n


def predict_rows(model: BaseModel, processors: dict[str, Any], ds: BaseDataset, dataset: str,
                 split: str, indices: Iterable[int], dev: torch.device, *, batch_size: int,
                 num_workers: int = 0, beam_size: int = 1, max_length: int = 20
                 ) -> Iterator[list[Row]]:
    """EvalAI rows for the items ``indices`` of ``ds``, one list per batch, in order: the
    prediction code of this module, of the trainer's evaluation and of the service's
    batch-prediction jobs."""
    loader = DataLoader(ds, batch_size=batch_size, sampler=list(indices),
                        num_workers=num_workers, collate_fn=collate,
                        pin_memory=dev.type == "cuda")
    decode = output_decoder(model, processors, dataset, split, beam_size, max_length)
    model.eval()
    for batch in loader:
        for key in TRAINING_FIELDS:
            batch.pop(key, None)
        batch = {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
        batch["dataset"] = dataset
        with _inference(dev):
            yield decode(batch)


def output_decoder(model: BaseModel, processors: dict[str, Any], dataset: str, split: str,
                   beam_size: int, max_length: int) -> Callable[[dict[str, Any]], list[Row]]:
    """Batch -> EvalAI rows for ``dataset`` (also used by the trainer's evaluation)."""
    if dataset in ("vqa2", "textvqa", "vizwiz"):
        space = processors.get(f"answer_space_{dataset}", processors.get("answer_space"))
        if space is None:
            raise PredictError(f"the release has no answer space for {dataset}")

        def answer(batch: dict[str, Any]) -> list[Row]:
            logits = model(batch)["logits"].float().cpu().clone()  # (B, A[+K])
            if space.answers and space.answers[0] == UNK_ANSWER:
                logits[:, 0] = float("-inf")  # never answer "<unk>"
            if dataset == "textvqa":
                from models.lorra import decode_answers

                decoded = decode_answers(logits, space.answers, batch["ocr_tokens"], top_k=1)
                answers = [d[0][0] if d else "" for d in decoded]
            else:
                answers = [space.idx2word(int(j)) for j in logits.argmax(1).tolist()]
            if dataset == "vizwiz":
                return evalai.vizwiz_results(batch["image_name"], answers)
            return evalai.vqa_results(_ints(batch["question_id"]), answers)

        return answer
    if dataset == "coco":
        vocab = processors.get("caption_vocab")
        if vocab is None:
            raise PredictError("the release has no caption_vocab processor")

        def caption(batch: dict[str, Any]) -> list[Row]:
            results = model.generate(batch, beam_size=beam_size,  # type: ignore[operator]
                                     max_length=max_length)
            return evalai.coco_results(_ints(batch["image_id"]),
                                       [vocab.decode(r["ids"]) for r in results])

        return caption

    def dialog(batch: dict[str, Any]) -> list[Row]:
        out = model(batch)
        if "scores" not in out:
            raise PredictError(f"this {model.family!r} release gives no option scores")
        ranks = scores_to_ranks(out["scores"].float()).cpu()  # (B, R, O)
        round_mask = batch["round_mask"].bool().cpu()  # (B, R)
        image_ids, round_ids, rows = [], [], []
        for b, image_id in enumerate(_ints(batch["image_id"])):
            rounds = torch.nonzero(round_mask[b]).flatten().tolist()
            if split == "test":
                rounds = rounds[-1:]  # the last round, the one with options
            for r in rounds:
                image_ids.append(image_id)
                round_ids.append(r + 1)
                rows.append(ranks[b, r].tolist())
        return evalai.visdial_results(image_ids, round_ids, rows)

    return dialog


def _ints(values: Any) -> list[int]:
    return [int(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values)]


@contextlib.contextmanager
def _inference(dev: torch.device) -> Iterator[None]:
    with torch.inference_mode():
        if dev.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


@contextlib.contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[int], Any]]:
    if not (enabled and sys.stderr.isatty()):
        yield lambda n: None
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="batch", dynamic_ncols=True) as bar:
        yield bar.update


# -- merging and validation ------------------------------------------------------------------
def generic_split(dataset: str, split: str) -> str:
    """The reader's split name for a generic or official one; PredictError if unknown."""
    return _generic_split(dataset, split)


def check_serves(model: BaseModel, dataset: str) -> None:
    """PredictError unless ``model`` can predict ``dataset`` from raw images."""
    _check_serves(model, dataset)


def build_split(dataset: str, data_dir: str | os.PathLike[str], split: str,
                processors: dict[str, Any]) -> BaseDataset:
    """The reader of a split with a release's processors (and its exact image transform)."""
    return _build_dataset(dataset, data_dir, split, processors)


def expected_keys(ds: BaseDataset, dataset: str, data_dir: str | os.PathLike[str],
                  split: str) -> list[Any]:
    """The keys an EvalAI result for the split must cover, each once."""
    return _expected_keys(ds, dataset, data_dir, split)


def validate_rows(dataset: str, rows: Sequence[Any], expected: list[Any],
                  num_options: int = 100) -> None:
    """``evalai.SubmissionError`` unless ``rows`` cover ``expected`` exactly once."""
    _validate(dataset, rows, expected, num_options)


def row_key(dataset: str) -> Callable[[Row], Hashable]:
    """The key identifying a result row of ``dataset`` (question id, image, (image, round))."""
    return _row_key(dataset)



def _shard_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.name}.rank{rank}.jsonl")


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _row_key(dataset: str) -> Callable[[Row], Hashable]:
    if dataset == "vizwiz":
        return lambda e: e["image"]
    if dataset == "coco":
        return lambda e: e["image_id"]
    if dataset == "visdial":
        return lambda e: (e["image_id"], e["round_id"])
    return lambda e: e["question_id"]


def _expected_keys(ds: BaseDataset, dataset: str, data_dir: str | os.PathLike[str],
                   split: str) -> list[Any]:
    """The keys the result must cover: from ``load_ground_truth`` where the split has
    answers, else from the reader's records (test splits)."""
    from training.data import coco, textvqa, visdial, vizwiz, vqa2

    data_dir = Path(data_dir)
    records: Any = getattr(ds, "records", None)
    if dataset == "vqa2":
        if getattr(ds, "has_answers", False):
            records = vqa2.load_ground_truth(data_dir, split)
        return [r["question_id"] for r in records]
    if dataset == "textvqa":
        if split != "test":
            records = textvqa.load_ground_truth(data_dir, split)
        return [r["question_id"] for r in records]
    if dataset == "vizwiz":
        if split != "test":
            records = vizwiz.load_ground_truth(data_dir, split)
        return [r["image"] for r in records]
    if dataset == "coco":
        return list(coco.load_ground_truth(data_dir, split))
    if split == "test":
        return list(evalai.visdial_expected_rounds(ds.dialogs, "test"))  # type: ignore[attr-defined]
    dialogs = visdial.load_ground_truth(data_dir, split)["dialogs"]
    return list(evalai.visdial_expected_rounds(dialogs, split))


def _validate(dataset: str, results: Sequence[Any], expected: list[Any],
              num_options: int) -> None:
    if dataset in ("vqa2", "textvqa"):
        evalai.validate_vqa(results, expected)
    elif dataset == "vizwiz":
        evalai.validate_vizwiz(results, expected)
    elif dataset == "coco":
        evalai.validate_coco(results, expected)
    else:
        evalai.validate_visdial(results, expected, num_options=num_options)


def _merge(shards: Sequence[Path], out: Path, dataset: str, expected: list[Any], *,
           num_options: int) -> int:
    """Stream the JSON-lines shards into the JSON list ``out`` (atomically, repeated keys
    dropped), validated before it is renamed into place; returns the row count."""
    key = _row_key(dataset)
    seen: set[Hashable] = set()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("[")
            for shard in shards:
                with shard.open(encoding="utf-8") as lines:
                    for line in lines:
                        if not line.strip():
                            continue
                        k = key(json.loads(line))
                        if k in seen:
                            continue
                        seen.add(k)
                        f.write(("," if n else "") + line.rstrip("\n"))
                        n += 1
            f.write("]")
            f.flush()
            os.fsync(f.fileno())
        try:
            _validate(dataset, evalai.read_results(tmp), expected, num_options)
        except evalai.SubmissionError as exc:
            raise PredictError(f"{out}: invalid {dataset} result: {exc}") from None
        os.replace(tmp, out)
    except BaseException:
        _remove(tmp)
        raise
    return n


# -- CLI -------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.predict",
                                description="Predict a split into an EvalAI result file.")
    p.add_argument("--model", required=True, help="release directory")
    p.add_argument("--dataset", required=True, help=", ".join(DATASET_NAMES))
    p.add_argument("--data-dir", required=True, help="the dataset's official files")
    p.add_argument("--split", required=True, help="generic (val) or official (val2014) name")
    p.add_argument("--out", required=True, help="the result file (JSON)")
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--beam-size", type=int, default=1, help="coco captions")
    p.add_argument("--max-length", type=int, default=20, help="coco captions")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = predict(args.model, args.dataset, args.data_dir, args.split, args.out,
                         batch_size=args.batch_size, device=args.device,
                         beam_size=args.beam_size, max_length=args.max_length,
                         num_workers=args.num_workers, progress=not args.no_progress)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

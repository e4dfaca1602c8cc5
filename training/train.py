"""Train a model: ``train.py --config CONFIG [key=value ...]``.

One CPU process::

    python training/train.py --config exp.yaml trainer.device=cpu
    python -m training.train --config exp.yaml trainer.device=cpu

One GPU::

    python -m training.train --config exp.yaml trainer.device=cuda

Eight GPUs on one machine (one process per GPU, each on ``cuda:$LOCAL_RANK``, NCCL)::

    torchrun --standalone --nproc_per_node=8 training/train.py --config exp.yaml

Two machines with 8 GPUs each (run on both, NODE_RANK 0 and 1; MASTER = node 0's address)::

    torchrun --nnodes=2 --node_rank=$NODE_RANK --nproc_per_node=8 \\
        --rdzv_backend=c10d --rdzv_endpoint=$MASTER:29500 training/train.py --config exp.yaml

Several CPU processes (gloo) work the same way: ``torchrun --standalone --nproc_per_node=2
training/train.py --config exp.yaml trainer.device=cpu``.

``trainer.batch_size`` is global: per rank and forward pass it is
``batch_size / (world_size * trainer.accumulate)`` (e.g. 512 / (16 GPUs * 2) = 16), so the
same config trains the same model on any number of GPUs. Resume a run with ``run.resume=true``
(same ``run.save_dir``); SIGTERM writes ``checkpoints/current.pt`` before exiting.
See ``training/trainer.py`` for the run directory's contents.

Exit status: 0 when training finished (or stopped early), 1 with ``error: ...`` on stderr for a
bad config, a missing dataset or an unavailable device, 143 after SIGTERM (checkpoint saved).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):  # run as a file (torchrun training/train.py): the repo on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.config import ConfigError, load_config
from training.trainer import Trainer, TrainError

SIGTERM_EXIT = 128 + 15


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="training.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=None, help="experiment YAML (layer 4 of the config)")
    p.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        summary = Trainer(cfg).train()
    except (ConfigError, TrainError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if summary["stopped"] == "signal":
        print(json.dumps(summary, default=str))
        return SIGTERM_EXIT
    print(json.dumps(summary, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

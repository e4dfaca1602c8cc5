"""The demo model ``make serve`` serves: ``python -m service.demo [--run-dir runs/demo]``.

If ``RUN_DIR/release`` holds a loadable release, nothing happens. Otherwise the ShapesWorld
data is generated into ``--data-dir`` (unless already there) and the multi-task model is
trained on all five datasets with our own trainer (``training/configs/shapes/multitask.yaml``
at ``--updates`` updates: a few minutes on a 2-core CPU, progress shown), and its release is
kept in ``RUN_DIR/release``. Prints the release path on the last line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / "training" / "configs" / "shapes" / \
    "multitask.yaml"
DATASETS = ("vqa2", "textvqa", "vizwiz", "coco", "visdial")


def release_ok(release: Path) -> bool:
    if not (release / "config.json").is_file():
        return False
    from models.release import ReleaseError, load_config

    try:
        load_config(release)
    except (ReleaseError, OSError, ValueError):
        return False
    return True


def ensure_demo_model(run_dir: Path, data_dir: Path, *, updates: int, device: str = "auto",
                      batch_size: int = 32) -> Path:
    """The demo release directory, trained first if it is not there."""
    release = run_dir / "release"
    if release_ok(release):
        print(f"demo model: using the cached release {release}", flush=True)
        return release
    from training.data import shapes

    missing = [d for d in DATASETS if not (data_dir / d).is_dir()]
    if missing:
        print(f"demo model: generating ShapesWorld into {data_dir} ...", flush=True)
        shapes.generate(data_dir)
    print(f"demo model: training the multi-task model for {updates} updates into {run_dir} "
          "(a few minutes on CPU) ...", flush=True)
    from training.train import main as train

    t0 = time.perf_counter()
    code = train(["--config", str(CONFIG), f"run.save_dir={run_dir}",
                  *(f"datasets.{d}.data_dir={data_dir / d}" for d in DATASETS),
                  f"trainer.max_updates={updates}", f"trainer.batch_size={batch_size}",
                  f"trainer.eval_every={updates}", f"trainer.checkpoint_every={updates}",
                  f"trainer.device={device}", "trainer.early_stop.metric=null"])
    if code != 0 or not release_ok(release):
        raise SystemExit(f"error: training the demo model failed (exit {code})")
    print(f"demo model: trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return release


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
    p.add_argument("--data-dir", type=Path, default=Path("data/shapes"))
    p.add_argument("--updates", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    release = ensure_demo_model(args.run_dir, args.data_dir, updates=args.updates,
                                device=args.device, batch_size=args.batch_size)
    print(release)
    return 0


if __name__ == "__main__":
    sys.exit(main())

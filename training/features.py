"""Build and inspect feature stores (``training.data.feature_store``).

``python -m training.features <command> ...``; ``main(argv) -> int`` returns 0 on success,
1 on an error (printed as ``error: ...`` on stderr) and 2 on bad arguments.

Commands
--------
``extract --images DIR --backbone resnet152 [--weights FILE] --out STORE [--image-size 448]``
    Grid features of every ``.jpg``/``.jpeg``/``.png`` in DIR (``--recursive``: subfolders too).
    Each image is decoded with its EXIF orientation applied, converted to RGB, resized to
    image-size x image-size, ImageNet-normalized and run through ``resnet_trunk``; the
    (C, h, w) map is stored as ``features`` (h*w, C) (row-major cells) with attrs
    ``kind="grid"``, ``grid=[h, w]``, ``image_w``/``image_h`` (the image after EXIF rotation).
    Keys are the file names without extension (they must be unique). No weights are ever
    downloaded: without ``--weights`` (a local torchvision state dict) the backbone is randomly
    initialised, which a warning says.
``import-npy --dir DIR --out STORE [--allow-pickle]``
    MMF-style ``<key>.npy`` (N, D) feature files (and ``<key>.npz`` with ``features``/``x``,
    ``bbox``/``boxes``, ``image_w``/``image_h``). Their ``<key>_info.npy`` (pickled dicts with
    ``bbox``, ``image_width``, ``image_height``, ``num_boxes``, ``objects``) are read only with
    ``--allow-pickle``: loading a pickle can execute arbitrary code.
``import-tsv --tsv FILE [FILE ...] --out STORE [--key-template "{image_id}"]``
    bottom-up-attention TSV rows ``image_id, image_w, image_h, num_boxes, boxes, features``
    (tab-separated, no header; boxes/features are base64 float32 (num_boxes, 4)/(num_boxes, D);
    further fields are ignored). The key is ``key_template.format(image_id=...)`` with a numeric
    image_id passed as int, e.g. ``COCO_train2014_{image_id:012d}``.
``info STORE``
    Meta, record count and a few keys (with one record's array shapes) as JSON.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import csv
import json
import math
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from tqdm import tqdm

from training.data.feature_store import FeatureStore, FeatureStoreWriter, key_for_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TSV_FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
PICKLE_HELP = (
    "also read the <key>_info.npy files (boxes, image size). They are pickled, and "
    "np.load(allow_pickle=True) executes arbitrary code from an untrusted file: use only for "
    "files you trust"
)


class CLIError(Exception):
    """A user-facing failure; ``main`` prints it and returns 1."""


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr)


def _created_by(argv: Sequence[str]) -> str:
    return "python -m training.features " + shlex.join(argv)


def _writer(args: argparse.Namespace, argv: Sequence[str], same_meta: Sequence[str] = (),
            **meta: Any) -> FeatureStoreWriter:
    return FeatureStoreWriter(args.out, overwrite=args.overwrite, dtype=args.dtype,
                              created_by=_created_by(argv), meta=meta, same_meta=same_meta)


# --------------------------------------------------------------------------------------------
# extract


def find_images(root: Path, *, recursive: bool = False) -> list[Path]:
    """Image files under ``root`` sorted by path; ``CLIError`` on duplicate keys (stems)."""
    if not root.is_dir():
        raise CLIError(f"--images {root}: not a directory")
    candidates = root.rglob("*") if recursive else root.glob("*")
    paths = sorted(p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    seen: dict[str, Path] = {}
    for path in paths:
        key = key_for_image(path)
        if key in seen:
            raise CLIError(f"two images have the key {key!r} (keys are file names without "
                           f"extension, and must be unique): {seen[key]} and {path}")
        seen[key] = path
    return paths


def _resolve_device(spec: str) -> Any:
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise CLIError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if not torch.cuda.is_available():
        raise CLIError(f"--device {spec}: CUDA is not available on this machine "
                       "(torch.cuda.is_available() is False); use --device cpu or auto")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise CLIError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


class _ImageFiles:
    """Map-style dataset: index -> (index, (3, S, S) float tensor | None, w, h, error | None)."""

    def __init__(self, paths: Sequence[Path], transform: Any) -> None:
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any, int, int, str | None]:
        from models.processors.image import load_image

        try:
            img = load_image(self.paths[index])
            width, height = img.size
            return index, self.transform(img), width, height, None
        except (OSError, ValueError) as exc:  # ImageDecodeError is a ValueError
            return index, None, 0, 0, str(exc) or type(exc).__name__


def _collate(batch: list[tuple[int, Any, int, int, str | None]]) -> dict[str, Any]:
    import torch

    good = [item for item in batch if item[1] is not None]
    return {
        "index": [item[0] for item in good],
        "size": [(item[2], item[3]) for item in good],
        "images": torch.stack([item[1] for item in good]) if good else None,
        "errors": [(item[0], item[4]) for item in batch if item[1] is None],
    }


def cmd_extract(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import torch

    from models.layers.backbones import RESNET_CHANNELS, resnet_trunk
    from models.processors.image import ImageTransform

    if args.image_size < 32:
        raise CLIError(f"--image-size must be >= 32, got {args.image_size}")
    if args.batch_size < 1 or args.num_workers < 0:
        raise CLIError("--batch-size must be >= 1 and --num-workers >= 0")
    device = _resolve_device(args.device)
    paths = find_images(Path(args.images), recursive=args.recursive)
    if not paths:
        raise CLIError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {args.images}"
                       + ("" if args.recursive else " (add --recursive for subfolders)"))
    model = resnet_trunk(args.backbone, weights_path=args.weights)
    if args.weights is None:
        _warn(f"no --weights given: {args.backbone} is randomly initialised (nothing can be "
              "downloaded), so these features carry no pretrained information. Pass --weights "
              "with a local torchvision state dict for meaningful features.")
    cuda = device.type == "cuda"
    model = model.to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    # bf16 autocast only when storing float16 anyway; float32 output is computed in float32.
    autocast = cuda and args.dtype == "float16"

    transform = ImageTransform(size=args.image_size)
    meta = {"backbone": args.backbone, "channels": RESNET_CHANNELS[args.backbone],
            "weights": str(Path(args.weights).resolve()) if args.weights else None,
            "pretrained": args.weights is not None, "image_size": args.image_size,
            "transform": transform.to_dict()}
    written = skipped_existing = 0
    bad: list[tuple[Path, str]] = []
    grid: tuple[int, int] | None = None
    same = ("backbone", "weights", "pretrained", "image_size", "transform")
    with _writer(args, argv, same, **meta) as writer, torch.inference_mode():
        if args.skip_existing:
            todo = [p for p in paths if key_for_image(p) not in writer]
            skipped_existing = len(paths) - len(todo)
            paths = todo
        dataset = _ImageFiles(paths, transform)
        loader: Any = torch.utils.data.DataLoader(
            cast(Any, dataset), batch_size=args.batch_size, shuffle=False,
            num_workers=args.num_workers, collate_fn=_collate, pin_memory=cuda,
        )
        with tqdm(total=len(dataset), unit="img", desc="extract", disable=args.no_progress,
                  file=sys.stderr) as progress:
            for batch in loader:
                for index, message in batch["errors"]:
                    path = dataset.paths[index]
                    if not args.skip_bad:
                        raise CLIError(f"cannot read image {path}: {message} (pass --skip-bad "
                                       "to skip unreadable images; the records written so far "
                                       "are kept: add --skip-existing to resume)")
                    bad.append((path, message))
                progress.update(len(batch["errors"]))
                if batch["images"] is None:
                    continue
                images = batch["images"].to(device, non_blocking=cuda)
                if cuda:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                    fmap = model(images)
                _, channels, h, w = fmap.shape
                grid = (h, w)
                feats = fmap.permute(0, 2, 3, 1).reshape(fmap.shape[0], h * w, channels)
                feats_np = feats.to(getattr(torch, args.dtype)).cpu().numpy()
                for row, index in enumerate(batch["index"]):
                    width, height = batch["size"][row]
                    writer.put(key_for_image(dataset.paths[index]), {"features": feats_np[row]},
                               {"kind": "grid", "grid": [h, w], "image_w": width,
                                "image_h": height})
                    written += 1
                progress.update(len(batch["index"]))
    if bad:
        shown = "; ".join(f"{p}: {m}" for p, m in bad[:5])
        _warn(f"skipped {len(bad)} unreadable image(s) (--skip-bad): {shown}"
              + (" ..." if len(bad) > 5 else ""))
    shape = f"{grid[0]}x{grid[1]} grid, " if grid else ""
    print(f"wrote {written} records ({shape}{RESNET_CHANNELS[args.backbone]} channels, "
          f"{args.dtype}) to {args.out}"
          + (f"; {skipped_existing} already present" if skipped_existing else "")
          + (f"; skipped {len(bad)} unreadable" if bad else ""))
    return 0


# --------------------------------------------------------------------------------------------
# import-npy


def _as_2d(arr: np.ndarray, source: Path) -> np.ndarray:
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.dtype.kind != "f":
        raise CLIError(f"{source}: expected a float (N, D) feature array, got {arr.dtype} "
                       f"{arr.shape}")
    if arr.dtype not in (np.float16, np.float32):
        arr = arr.astype(np.float32)
    return arr


def _kind_attrs(kind: str, n: int, source: Path) -> dict[str, Any]:
    if kind == "grid":
        side = math.isqrt(n)
        if side * side != n:
            raise CLIError(f"{source}: --kind grid needs a square number of cells, got {n}")
        return {"kind": "grid", "grid": [side, side]}
    return {"kind": "region"}


def _region_extras(features: np.ndarray, info: dict[str, Any], source: Path,
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """boxes/objects arrays and image size attrs from an MMF info dict or npz contents."""
    n = features.shape[0]
    arrays: dict[str, np.ndarray] = {}
    attrs: dict[str, Any] = {}
    bbox = next((info[k] for k in ("bbox", "boxes") if info.get(k) is not None), None)
    if bbox is not None:
        boxes = np.asarray(bbox, dtype=np.float32)
        if boxes.shape != (n, 4):
            raise CLIError(f"{source}: bbox has shape {boxes.shape}, expected ({n}, 4) for the "
                           f"{n} features")
        arrays["boxes"] = boxes
    objects = info.get("objects")
    if objects is not None:
        objects = np.asarray(objects)
        if objects.shape == (n,) and objects.dtype.kind in "iu":
            arrays["objects"] = objects.astype(np.int64)
    for attr, names in (("image_w", ("image_width", "image_w")),
                        ("image_h", ("image_height", "image_h")),
                        ("num_boxes", ("num_boxes", "num_bbox"))):
        value = next((info[k] for k in names if info.get(k) is not None), None)
        if value is not None:
            try:
                attrs[attr] = int(np.asarray(value).reshape(()))
            except (TypeError, ValueError):
                raise CLIError(f"{source}: {names[0]} is not a number: {value!r}") from None
    return arrays, attrs


def _load_info(path: Path) -> dict[str, Any]:
    try:
        obj = np.load(path, allow_pickle=True)  # only with --allow-pickle (trusted files)
    except Exception as exc:  # unpickling can fail in any way
        raise CLIError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise CLIError(f"{path}: expected a pickled dict (bbox, image_width, ...), got "
                       f"{type(obj).__name__}")
    return obj


def cmd_import_npy(args: argparse.Namespace, argv: Sequence[str]) -> int:
    root = Path(args.dir)
    if not root.is_dir():
        raise CLIError(f"--dir {root}: not a directory")
    pattern_files = root.rglob("*") if args.recursive else root.glob("*")
    files = sorted(p for p in pattern_files if p.suffix in (".npy", ".npz") and p.is_file())
    info_files = {p for p in files if p.name.endswith("_info.npy")}
    feature_files = [p for p in files if p not in info_files]
    if not feature_files:
        raise CLIError(f"no .npy/.npz feature files in {root}")
    seen: dict[str, Path] = {}
    for path in feature_files:
        if path.stem in seen:
            raise CLIError(f"two feature files have the key {path.stem!r}: {seen[path.stem]} "
                           f"and {path}")
        seen[path.stem] = path
    used_info: set[Path] = set()
    written = 0
    with _writer(args, argv, source="import-npy", source_dir=str(root.resolve())) as writer:
        for path in tqdm(feature_files, unit="file", desc="import-npy",
                         disable=args.no_progress, file=sys.stderr):
            arrays: dict[str, np.ndarray] = {}
            attrs: dict[str, Any] = {}
            try:
                loaded = np.load(path, allow_pickle=False)
                if isinstance(loaded, np.lib.npyio.NpzFile):
                    with loaded:
                        contents = {k: loaded[k] for k in loaded.files}
                    raw = next((contents[k] for k in ("features", "x") if k in contents), None)
                    if raw is None:
                        raise CLIError(f"{path}: no 'features' or 'x' array (has "
                                       f"{sorted(contents)})")
                    features = _as_2d(raw, path)
                    arrays, attrs = _region_extras(features, contents, path)
                else:
                    features = _as_2d(loaded, path)
            except (OSError, ValueError) as exc:
                raise CLIError(f"cannot read {path}: {exc}") from None
            info_path = path.with_name(path.stem + "_info.npy")
            if info_path in info_files:
                used_info.add(info_path)
                if args.allow_pickle:
                    arrays, attrs = _region_extras(features, _load_info(info_path), info_path)
            attrs = {**_kind_attrs(args.kind, features.shape[0], path), **attrs}
            writer.put(path.stem, {"features": features, **arrays}, attrs)
            written += 1
    if used_info and not args.allow_pickle:
        _warn(f"skipped {len(used_info)} _info.npy file(s): they are pickled, and "
              "np.load(allow_pickle=True) can execute arbitrary code from an untrusted file, so "
              "features were imported without boxes or image sizes. Re-run with --allow-pickle "
              "only if you trust these files.")
    orphans = len(info_files - used_info)
    if orphans:
        _warn(f"{orphans} _info.npy file(s) have no matching feature file and were ignored")
    print(f"wrote {written} records to {args.out}"
          + (f" ({len(used_info)} with _info.npy boxes)" if args.allow_pickle and used_info
             else ""))
    return 0


# --------------------------------------------------------------------------------------------
# import-tsv


def _set_csv_field_limit() -> None:
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:
            limit //= 2


def _b64_floats(text: str, what: str) -> np.ndarray:
    if text.startswith(("b'", 'b"')) and text.endswith(text[1]):
        text = text[2:-1]  # a Python 3 bytes repr written by some dump scripts
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 4:
        raise ValueError(f"{what}: {len(raw)} decoded bytes is not a whole number of float32")
    return np.frombuffer(raw, dtype=np.float32)


def _tsv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for row in reader:
            if row:
                yield reader.line_num, row


def parse_tsv_row(row: Sequence[str], where: str, key_template: str,
                  ) -> tuple[str, dict[str, np.ndarray], dict[str, Any]]:
    """One bottom-up-attention TSV row -> (key, arrays, attrs); ``CLIError`` naming ``where``
    (file:line) and the field on any malformed value."""
    if len(row) < len(TSV_FIELDS):
        raise CLIError(f"{where}: expected {len(TSV_FIELDS)} tab-separated fields "
                       f"({', '.join(TSV_FIELDS)}), got {len(row)}")
    field = "image_id"
    try:
        raw_id = row[0].strip()
        if not raw_id:
            raise ValueError("empty")
        image_id: int | str = int(raw_id) if raw_id.isdigit() else raw_id
        field = "image_w"
        image_w = int(float(row[1]))
        field = "image_h"
        image_h = int(float(row[2]))
        field = "num_boxes"
        num_boxes = int(row[3])
        if num_boxes <= 0:
            raise ValueError(f"must be > 0, got {num_boxes}")
        field = "boxes"
        boxes = _b64_floats(row[4], "boxes")
        if boxes.size != num_boxes * 4:
            raise ValueError(f"{boxes.size} floats, expected num_boxes * 4 = {num_boxes * 4}")
        field = "features"
        features = _b64_floats(row[5], "features")
        if features.size == 0 or features.size % num_boxes:
            raise ValueError(f"{features.size} floats is not a multiple of num_boxes "
                             f"({num_boxes})")
    except (ValueError, binascii.Error) as exc:
        raise CLIError(f"{where}: malformed field {field!r}: {exc}") from None
    try:
        key = key_template.format(image_id=image_id)
    except (KeyError, IndexError, ValueError, AttributeError) as exc:
        raise CLIError(f"{where}: --key-template {key_template!r} cannot format image_id "
                       f"{image_id!r}: {type(exc).__name__}: {exc}") from None
    arrays = {"features": features.reshape(num_boxes, -1), "boxes": boxes.reshape(num_boxes, 4)}
    attrs = {"kind": "region", "image_w": image_w, "image_h": image_h,
             "num_boxes": num_boxes, "image_id": image_id}
    return key, arrays, attrs


def cmd_import_tsv(args: argparse.Namespace, argv: Sequence[str]) -> int:
    _set_csv_field_limit()
    files = [Path(p) for p in args.tsv]
    for path in files:
        if not path.is_file():
            raise CLIError(f"--tsv {path}: file not found")
    written = 0
    with (
        _writer(args, argv, source="import-tsv", key_template=args.key_template) as writer,
        tqdm(unit="row", desc="import-tsv", disable=args.no_progress, file=sys.stderr) as progress,
    ):
        for path in files:
            try:
                for line, row in _tsv_rows(path):
                    where = f"{path}:{line}"
                    key, arrays, attrs = parse_tsv_row(row, where, args.key_template)
                    try:
                        writer.put(key, arrays, attrs)
                    except ValueError as exc:
                        raise CLIError(f"{where}: {exc}") from None
                    written += 1
                    progress.update(1)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise CLIError(f"{path}: not a readable TSV file: {exc}") from None
    print(f"wrote {written} records from {len(files)} TSV file(s) to {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# info


def cmd_info(args: argparse.Namespace, argv: Sequence[str]) -> int:
    store = FeatureStore(args.store)
    keys: list[str] = []
    for key in store:
        if len(keys) >= args.num_keys:
            break
        keys.append(key)
    example = None
    if keys:
        arrays, attrs = store.get_record(keys[0])
        example = {"key": keys[0],
                   "arrays": {name: {"dtype": str(a.dtype), "shape": list(a.shape)}
                              for name, a in arrays.items()},
                   "attrs": attrs}
        del arrays
    report = {"path": str(Path(args.store).resolve()), "count": len(store), "meta": store.meta,
              "keys": keys, "example": example}
    print(json.dumps(report, indent=2, default=str))
    store.close()
    return 0


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``python -m training.features``."""
    from models.layers.backbones import RESNET_CHANNELS

    parser = argparse.ArgumentParser(
        prog="python -m training.features",
        description="Build and inspect LMDB feature stores of precomputed image features.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_common_out(p: argparse.ArgumentParser, default_dtype: str | None) -> None:
        p.add_argument("--out", required=True, help="feature store directory to create or "
                       "append to")
        p.add_argument("--dtype", choices=("float16", "float32"), default=default_dtype,
                       help="stored feature dtype" + (" (default: as in the source)"
                                                      if default_dtype is None else
                                                      f" (default: {default_dtype})"))
        p.add_argument("--overwrite", action="store_true",
                       help="replace records whose key is already in the store (default: error)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = sub.add_parser("extract", help="grid features of an image folder with a ResNet trunk")
    p.add_argument("--images", required=True, help="folder of .jpg/.jpeg/.png images")
    p.add_argument("--backbone", default="resnet152", choices=sorted(RESNET_CHANNELS))
    p.add_argument("--weights", default=None,
                   help="local torchvision state dict (.pth/.pt/.safetensors) for the backbone, "
                        "or a release directory of ours (its trained backbone); without it the "
                        "backbone is randomly initialised (nothing is downloaded)")
    p.add_argument("--image-size", type=int, default=448,
                   help="images are resized to this square size (448 -> 14x14 grid)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip unreadable images (and report them) instead of failing")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip images whose key is already in the store (resume a run)")
    add_common_out(p, "float16")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("import-npy", help="import MMF-style per-image .npy/.npz features")
    p.add_argument("--dir", required=True, help="folder of <key>.npy (+ <key>_info.npy) files")
    p.add_argument("--allow-pickle", action="store_true", help=PICKLE_HELP)
    p.add_argument("--kind", choices=("region", "grid"), default="region",
                   help="record kind (grid: N must be a square, stored as grid [s, s])")
    p.add_argument("--recursive", action="store_true", help="include subfolders")
    add_common_out(p, None)
    p.set_defaults(func=cmd_import_npy)

    p = sub.add_parser("import-tsv", help="import bottom-up-attention TSV files")
    p.add_argument("--tsv", required=True, nargs="+", help="TSV file(s)")
    p.add_argument("--key-template", default="{image_id}",
                   help='record key from the image id, e.g. "COCO_train2014_{image_id:012d}" '
                        "(numeric ids are passed as int)")
    add_common_out(p, None)
    p.set_defaults(func=cmd_import_tsv)

    p = sub.add_parser("info", help="print a store's meta and a few keys as JSON")
    p.add_argument("store", help="feature store directory")
    p.add_argument("--num-keys", type=int, default=5, help="keys to list (default 5)")
    p.set_defaults(func=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; 0 on success, 1 on an error, 2 on bad arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args, argv))
    except KeyError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
    except (CLIError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())

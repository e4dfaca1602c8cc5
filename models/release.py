"""The release format: one model format from training to serving.

A release is a directory, in the ``save_pretrained`` convention of transformers. This docstring
is the contract; both halves of the project (training exports, the service loads) follow it.

::

    <dir>/config.json            (CONFIG_FILE) a JSON object:
        format          "pythia-release"
        format_version  1 (FORMAT_VERSION); a loader refuses a version it does not know
        family          the name the model class is registered under in ``models.MODELS``
        hparams         the constructor's keyword arguments: ``MODELS.get(family)(**hparams)``
                        builds an identical, untrained twin (see ``models.base``)
        tasks           the tasks served, e.g. ["vqa"]
        processors      names of the processors stored under processor/ (sorted)
        dtype           dtype of the floating-point weights: "float32", "bfloat16", ...
        created_by      informational: the writer (package and version)
        torch_version   informational: torch version of the writer
        parameters      informational: number of parameters
    <dir>/model.safetensors      (MODEL_FILE) the state dict, safetensors (never a pickle).
        Tensors are contiguous CPU tensors. Tensors sharing memory in the model (tied weights)
        are stored once: the header metadata key "pythia.aliases" holds a JSON object
        {alias name: stored name}; a loader fills each alias from its stored tensor.
    <dir>/processor/<name>.json  (PROCESSOR_DIR) one file per processor, each with a "type"
        field naming its class in ``models.PROCESSORS`` (``models.processors.save_processors``)
    <dir>/metrics.json           (METRICS_FILE, optional) evaluation at export time: a JSON
        object ({name: number} or nested)

Writing (``save_pretrained``) happens in a temporary sibling directory that is renamed into
place, so a reader never sees a half-written release and a failed export leaves nothing behind.

Loading (``load``) never unpickles: it reads JSON and safetensors only, treats every path as
hostile (symlinks must resolve inside the release, JSON files are size-limited, the weights
header is parsed and checked before any tensor is read) and refuses, with a ``ReleaseError``
naming the file and the problem, anything that does not rebuild the model exactly: unknown
format or version, unregistered family, rejected hyper-parameters, missing, unexpected or
mis-shaped tensors, a dtype of the wrong kind (float vs integer vs bool), processor problems.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import tempfile
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from models.base import BaseModel
from models.processors import load_processors, save_processors
from models.registry import MODELS

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
PROCESSOR_DIR = "processor"
METRICS_FILE = "metrics.json"
FORMAT = "pythia-release"
FORMAT_VERSION = 1
SUPPORTED_FORMAT_VERSIONS: tuple[int, ...] = (1,)
ALIASES_KEY = "pythia.aliases"
MAX_JSON_BYTES = 64 * 1024 * 1024  # config, metrics, processor files and the weights header

# Floating dtypes a release may declare in config.json ("dtype") and save_pretrained may cast to.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}


class ReleaseError(ValueError):
    """A release directory is malformed, or does not match the code that loads it."""


# -- writing ---------------------------------------------------------------------------------
def save_pretrained(
    model: nn.Module,
    directory: str | os.PathLike[str],
    *,
    processors: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write ``model`` (and its processors and metrics) as a release directory; returns its path.

    ``model`` may be wrapped by DDP (``.module``) and/or ``torch.compile`` (``._orig_mod``); the
    wrapped ``BaseModel`` is saved. Its ``family`` must be registered in ``MODELS`` as its own
    class, and ``type(model)(**model.hparams)`` must rebuild the same tensor names and shapes
    (checked on the meta device, so it costs no memory). ``dtype`` casts the floating-point
    tensors (e.g. ``torch.bfloat16``); integer and bool buffers are kept.

    The release is written into a temporary sibling directory and renamed into place. An
    existing non-empty ``directory`` raises ``FileExistsError`` unless ``overwrite=True``, in
    which case the old release is moved aside, the new one renamed in, and the old one deleted
    (on failure the old one is put back). Invalid input raises ``ReleaseError`` (or
    ``ValueError`` for a bad processor name) before anything is written.
    """
    base = unwrap_model(model)
    family = _check_family(base)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"save_pretrained: dtype must be a floating torch.dtype, got {dtype!r}")
    if dtype is not None and dtype not in DTYPES.values():
        raise ValueError(f"save_pretrained: dtype {dtype} not supported ({sorted(DTYPES)})")

    tensors, aliases = _flatten_state_dict(base.state_dict(), dtype)
    _check_rebuild(base, family, tensors, aliases)
    procs = dict(processors or {})
    for name in procs:
        if not isinstance(name, str):
            raise ValueError(f"save_pretrained: processor names must be strings, got {name!r}")

    config: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "family": family,
        "hparams": base.hparams,
        "tasks": list(base.tasks),
        "processors": sorted(procs),
        "created_by": _created_by(),
        "torch_version": torch.__version__,
        "dtype": _dtype_name(dtype if dtype is not None else _floating_dtype(base)),
        "parameters": int(base.num_parameters()),
    }
    config_text = _dumps(config, "config")
    metrics_text = _dumps(dict(metrics), "metrics") if metrics is not None else None

    target = Path(directory)
    _refuse_existing(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        save_file(tensors, str(tmp / MODEL_FILE),
                  metadata={"format": "pt", ALIASES_KEY: json.dumps(aliases, sort_keys=True)})
        (tmp / CONFIG_FILE).write_text(config_text, encoding="utf-8")
        if procs:
            save_processors(tmp / PROCESSOR_DIR, procs)
        if metrics_text is not None:
            (tmp / METRICS_FILE).write_text(metrics_text, encoding="utf-8")
        _fsync_tree(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp creates 0o700; a release is read by other users
        _move_into_place(tmp, target, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    return target


def unwrap_model(model: nn.Module) -> BaseModel:
    """The ``BaseModel`` inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``)
    wrappers, in any order and nesting."""
    seen = 0
    m: Any = model
    while not isinstance(m, BaseModel):
        inner = getattr(m, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(m, "module", None)
        if not isinstance(inner, nn.Module) or seen > 16:
            raise ReleaseError(
                f"save_pretrained: expected a models.base.BaseModel (possibly wrapped by DDP or "
                f"torch.compile), got {type(model).__name__}"
            )
        m, seen = inner, seen + 1
    return m


def _check_family(model: BaseModel) -> str:
    family = type(model).family
    if not isinstance(family, str) or not family:
        raise ReleaseError(f"save_pretrained: {type(model).__name__}.family is not set")
    if family not in MODELS:
        raise ReleaseError(
            f"save_pretrained: family {family!r} of {type(model).__name__} is not registered in "
            f"MODELS (known: {', '.join(MODELS.names()) or 'none'}); register the class with "
            f"@MODELS.register({family!r})"
        )
    registered = MODELS.get(family)
    if registered is not type(model):
        raise ReleaseError(
            f"save_pretrained: MODELS[{family!r}] is {registered!r}, not "
            f"{type(model).__name__}; a release must rebuild the class it was saved from"
        )
    return family


def _flatten_state_dict(
    state: Mapping[str, torch.Tensor], dtype: torch.dtype | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Contiguous CPU tensors for safetensors, plus {alias: stored name} for tied tensors.

    Two names for the exact same view (same storage, offset, shape, stride, dtype) are tied
    weights: stored once. Any other memory sharing (overlapping views) is broken by a copy,
    since safetensors refuses shared storage.
    """
    aliases: dict[str, str] = {}
    first_of: dict[tuple[Any, ...], str] = {}
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in state.items():
        if not isinstance(t, torch.Tensor):
            raise ReleaseError(f"save_pretrained: state_dict entry {name!r} is not a tensor "
                               f"({type(t).__name__}); a release stores tensors only")
        t = t.detach()
        if t.numel() > 0 and t.device.type != "meta":
            key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(),
                   tuple(t.shape), t.stride(), t.dtype)
            if key in first_of:
                aliases[name] = first_of[key]
                continue
            first_of[key] = name
        if t.device.type == "meta":
            raise ReleaseError(f"save_pretrained: tensor {name!r} is on the meta device "
                               f"(no data to save)")
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        if t.numel() > 0:
            ptr = t.untyped_storage().data_ptr()
            if ptr in storages:
                t = t.clone()
            else:
                storages.add(ptr)
        out[name] = t
    return out, aliases


def _check_rebuild(model: BaseModel, family: str, tensors: Mapping[str, torch.Tensor],
                   aliases: Mapping[str, str]) -> None:
    """Refuse to write a release whose hparams would not rebuild the same tensors.

    The twin is built on the meta device (no memory, no init cost). A constructor that cannot
    run on meta (it reads data from its tensors) skips this check; ``load`` still enforces it.
    """
    try:
        with torch.device("meta"):
            twin = type(model)(**model.hparams)
    except TypeError as exc:
        raise ReleaseError(
            f"save_pretrained: {type(model).__name__}(**model.hparams) fails ({exc}); the "
            f"constructor must call super().__init__() with exactly its keyword arguments"
        ) from None
    except Exception:
        return
    expected = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    found.update({a: found[s] for a, s in aliases.items()})
    if expected != found:
        problems = _key_problems(expected, found)
        raise ReleaseError(
            f"save_pretrained: rebuilding family {family!r} from model.hparams does not give "
            f"the model's tensors ({problems}); are all constructor arguments in hparams?"
        )


def _refuse_existing(target: Path, overwrite: bool) -> None:
    if not (target.exists() or target.is_symlink()):
        return
    if overwrite:
        return
    if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        return  # an empty directory is replaced without asking
    raise FileExistsError(
        f"{target}: already exists and is not an empty directory; pass overwrite=True to "
        f"replace it"
    )


def _move_into_place(tmp: Path, target: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside first (and restored if
    the rename fails). POSIX rename replaces an empty directory atomically."""
    try:
        os.replace(tmp, target)
        return
    except FileNotFoundError:
        raise
    except OSError:
        if not (target.exists() or target.is_symlink()):
            raise
    _refuse_existing(target, overwrite)  # someone wrote there meanwhile
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    aside = old / "release"
    os.replace(target, aside)
    try:
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.replace(aside, target)
        shutil.rmtree(old, ignore_errors=True)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        aside.unlink()
        old.rmdir()


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not supported on every file system / OS
    finally:
        os.close(fd)


def _dumps(obj: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(obj, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise ReleaseError(f"save_pretrained: {what} must be JSON-serializable with finite "
                           f"numbers and string keys ({exc})") from None


def _created_by() -> str:
    try:
        return f"pythia-mm {importlib_metadata.version('pythia-mm')}"
    except importlib_metadata.PackageNotFoundError:
        return "pythia-mm"


def _floating_dtype(model: nn.Module) -> torch.dtype:
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    return str(dtype).removeprefix("torch.")


# -- reading ---------------------------------------------------------------------------------
def load(
    directory: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    strict: bool = True,
) -> tuple[BaseModel, dict[str, Any]]:
    """Rebuild a release: ``(model in eval mode on device, {name: processor})``.

    The model is built as ``MODELS.get(family)(**hparams)`` and every tensor must match by
    name and shape; missing, unexpected or mis-shaped tensors are always refused. ``strict``
    (the default) also refuses a tensor whose dtype is of another kind (float vs integer vs
    bool); ``strict=False`` casts it. Floating tensors end up in ``dtype``, or by default in
    the release's ``dtype`` from config.json. A plugin family must be imported (registered)
    before loading. Raises ``ReleaseError`` naming the file and the problem.
    """
    root = _release_root(directory)
    _check_links(root)
    config = _validate_config(_read_json(root, CONFIG_FILE, "config"), root / CONFIG_FILE)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"load: dtype must be a floating torch.dtype, got {dtype!r}")

    model = _build(config, root)
    target_dtype = dtype if dtype is not None else DTYPES[config["dtype"]]
    if target_dtype != _floating_dtype(model):
        model.to(target_dtype)
    _load_weights(model, root, strict=strict)
    processors = _load_processors(root, config["processors"])
    _check_processor_sizes(model, processors, root)
    model.to(device)
    model.eval()
    return model, processors


def load_skeleton(directory: str | os.PathLike[str]) -> tuple[BaseModel, dict[str, Any]]:
    """The release's model built on the ``meta`` device (its structure and hyper-parameters,
    no weights read, no memory for them) and its processors: what a server front end needs
    to validate requests for a model that runs elsewhere. Same checks as ``load``."""
    root = _release_root(directory)
    _check_links(root)
    config = _validate_config(_read_json(root, CONFIG_FILE, "config"), root / CONFIG_FILE)
    with torch.device("meta"):
        model = _build(config, root)
    processors = _load_processors(root, config["processors"])
    _check_processor_sizes(model, processors, root)
    return model.eval(), processors


def load_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``config.json`` of a release (no model is built)."""
    root = _release_root(directory)
    return _validate_config(_read_json(root, CONFIG_FILE, "config"), root / CONFIG_FILE)


def load_metrics(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The release's ``metrics.json`` (a JSON object), or None when it has none."""
    root = _release_root(directory)
    path = root / METRICS_FILE
    if not (path.exists() or path.is_symlink()):
        return None
    data = _read_json(root, METRICS_FILE, "metrics")
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: metrics must be a JSON object, got {type(data).__name__}")
    return data


def _release_root(directory: str | os.PathLike[str]) -> Path:
    path = Path(directory)
    if not path.exists():
        raise ReleaseError(f"{path}: release directory not found")
    if not path.is_dir():
        raise ReleaseError(f"{path}: not a directory (a release is a directory holding "
                           f"{CONFIG_FILE} and {MODEL_FILE})")
    return path.resolve()


def _check_links(root: Path) -> None:
    """Refuse any symlink in the release that resolves outside it (or cannot be resolved)."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in [*dirnames, *filenames]:
            p = Path(dirpath) / name
            if p.is_symlink():
                _contained(root, p)


def _contained(root: Path, path: Path) -> Path:
    """``path`` resolved, refused unless it lies inside ``root`` (already resolved)."""
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError) as exc:
        raise ReleaseError(f"{path}: cannot be resolved ({exc})") from None
    if resolved != root and not resolved.is_relative_to(root):
        raise ReleaseError(f"{path}: resolves to {resolved}, outside the release directory "
                           f"{root}; refusing to follow it")
    return resolved


def _regular_file(root: Path, rel: str, what: str, *, limit: int | None) -> Path:
    path = root / rel
    if not (path.exists() or path.is_symlink()):
        raise ReleaseError(f"{path}: {what} file missing")
    resolved = _contained(root, path)
    if not resolved.is_file():
        raise ReleaseError(f"{path}: {what} is not a regular file")
    size = resolved.stat().st_size
    if limit is not None and size > limit:
        raise ReleaseError(f"{path}: {what} file is {size} bytes, over the limit of {limit}")
    return resolved


def _read_json(root: Path, rel: str, what: str) -> Any:
    path = _regular_file(root, rel, what, limit=MAX_JSON_BYTES)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"{root / rel}: not valid JSON ({exc})") from None


def _validate_config(data: Any, path: Path) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ReleaseError(f"{path}: must be a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise ReleaseError(f"{path}: field 'format' is {data.get('format')!r}, expected "
                           f"{FORMAT!r}; this is not a Pythia release")
    version = data.get("format_version")
    supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ReleaseError(f"{path}: field 'format_version' must be an integer, got "
                           f"{version!r} (supported: {supported})")
    if version not in SUPPORTED_FORMAT_VERSIONS:
        newer = " (newer than this code; upgrade pythia-mm)" if version > FORMAT_VERSION else ""
        raise ReleaseError(f"{path}: format_version {version} is not supported{newer}; "
                           f"supported versions: {supported}")
    checks: list[tuple[str, type, str]] = [
        ("family", str, "a string"),
        ("hparams", dict, "an object"),
        ("tasks", list, "a list of strings"),
        ("processors", list, "a list of strings"),
        ("dtype", str, "a string"),
    ]
    for key, kind, desc in checks:
        if key not in data:
            raise ReleaseError(f"{path}: field {key!r} missing")
        value = data[key]
        if not isinstance(value, kind) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)):
            raise ReleaseError(f"{path}: field {key!r} must be {desc}, got {value!r:.200}")
    if not data["family"]:
        raise ReleaseError(f"{path}: field 'family' is empty")
    if data["dtype"] not in DTYPES:
        raise ReleaseError(f"{path}: field 'dtype' is {data['dtype']!r}, expected one of "
                           f"{sorted(DTYPES)}")
    if len(set(data["processors"])) != len(data["processors"]):
        raise ReleaseError(f"{path}: field 'processors' lists a name twice")
    return data


def _build(config: Mapping[str, Any], root: Path) -> BaseModel:
    family = config["family"]
    path = root / CONFIG_FILE
    if family not in MODELS:
        raise ReleaseError(
            f"{path}: family {family!r} is not registered (known: "
            f"{', '.join(MODELS.names()) or 'none'}); a plugin family must be imported before "
            f"loading so that its @MODELS.register runs"
        )
    factory = MODELS.get(family)
    try:
        model = factory(**config["hparams"])
    except (TypeError, ValueError) as exc:
        raise ReleaseError(f"{path}: hparams rejected by family {family!r}: {exc}") from None
    if not isinstance(model, BaseModel):
        raise ReleaseError(f"{path}: MODELS[{family!r}] built a {type(model).__name__}, "
                           f"not a models.base.BaseModel")
    return model


def _load_weights(model: BaseModel, root: Path, *, strict: bool) -> None:
    path = _regular_file(root, MODEL_FILE, "weights", limit=None)
    shown = root / MODEL_FILE
    header, meta = _read_safetensors_header(path, shown)
    aliases = _parse_aliases(meta, header, shown)

    expected = model.state_dict()
    found_shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    found_shapes.update({a: found_shapes[s] for a, s in aliases.items()})
    expected_shapes = {k: tuple(v.shape) for k, v in expected.items()}
    if found_shapes.keys() != expected_shapes.keys():
        raise ReleaseError(f"{shown}: tensors do not match family "
                           f"{type(model).family!r}: "
                           f"{_key_problems(expected_shapes, found_shapes)}")
    wrong = [f"{k} (expected {list(s)}, found {list(found_shapes[k])})"
             for k, s in expected_shapes.items() if found_shapes[k] != s]
    if wrong:
        raise ReleaseError(f"{shown}: wrong shape for {len(wrong)} tensor(s): "
                           f"{_few(wrong)}")
    if strict:
        kinds = []
        for k, t in expected.items():
            stored = header[aliases.get(k, k)]["dtype"]
            if _kind_of_safetensors(stored) != _kind_of_torch(t.dtype):
                kinds.append(f"{k} (expected {_kind_of_torch(t.dtype)} like {t.dtype}, "
                             f"found {stored})")
        if kinds:
            raise ReleaseError(f"{shown}: wrong dtype kind for {len(kinds)} tensor(s): "
                               f"{_few(kinds)} (load(strict=False) casts)")

    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for k in header:
                state[k] = f.get_tensor(k)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ReleaseError(f"{shown}: corrupt safetensors file ({exc})") from None
    for alias, stored in aliases.items():
        state[alias] = state[stored]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ReleaseError(f"{shown}: {exc}") from None


def _read_safetensors_header(path: Path, shown: Path
                             ) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Parse and check the header of a safetensors file without trusting anything in it.

    Layout: 8 bytes little-endian header length N, N bytes of JSON, then the tensor data.
    A pickle or a torch.save zip fails here (its first bytes give an absurd N), unread.
    """
    size = path.stat().st_size

    def bad(why: str) -> ReleaseError:
        return ReleaseError(
            f"{shown}: not a safetensors file ({why}); a release holds weights only as "
            f"safetensors, never a pickle/torch.save checkpoint - re-export it with "
            f"models.release.save_pretrained"
        )

    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise bad(f"{size} bytes, too short for a header")
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > size - 8 or n > MAX_JSON_BYTES:
            hint = ""
            if head.startswith(b"PK\x03\x04"):
                hint = "; it looks like a zip / torch.save file"
            elif head[:1] == b"\x80":
                hint = "; it looks like a pickle"
            raise bad(f"header length {n} is impossible for a {size}-byte file{hint}")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise bad("the header is not JSON") from None
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("'__metadata__' must map strings to strings")
    data_len = size - 8 - n
    for name, info in header.items():
        ok = (isinstance(info, dict) and isinstance(info.get("dtype"), str)
              and isinstance(info.get("shape"), list)
              and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                      for d in info["shape"])
              and isinstance(info.get("data_offsets"), list) and len(info["data_offsets"]) == 2
              and all(isinstance(o, int) and not isinstance(o, bool)
                      for o in info["data_offsets"]))
        if not ok:
            raise bad(f"entry {name!r} lacks a valid dtype/shape/data_offsets")
        begin, end = info["data_offsets"]
        if not 0 <= begin <= end <= data_len:
            raise bad(f"entry {name!r} points outside the file")
        numel = math.prod(info["shape"])
        if end - begin != numel * _itemsize(info["dtype"], name, bad):
            raise bad(f"entry {name!r}: {end - begin} bytes for shape {info['shape']} "
                      f"of {info['dtype']}")
    return header, meta


def _itemsize(dtype: str, name: str, bad: Any) -> int:
    sizes = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
             "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
             "C64": 8, "C128": 16}
    if dtype not in sizes:
        raise bad(f"entry {name!r} has unknown dtype {dtype!r}")
    return sizes[dtype]


def _parse_aliases(meta: Mapping[str, str], header: Mapping[str, Any], shown: Path
                   ) -> dict[str, str]:
    raw = meta.get(ALIASES_KEY)
    if raw is None:
        return {}
    try:
        aliases = json.loads(raw)
    except json.JSONDecodeError:
        aliases = None
    if not isinstance(aliases, dict) or not all(
            isinstance(a, str) and isinstance(s, str) and s in header and a not in header
            for a, s in aliases.items()):
        raise ReleaseError(f"{shown}: metadata {ALIASES_KEY!r} must map names absent from the "
                           f"file to stored tensor names")
    return aliases


def _kind_of_safetensors(dtype: str) -> str:
    if dtype == "BOOL":
        return "bool"
    if dtype.startswith("F") or dtype.startswith("BF"):
        return "float"
    if dtype.startswith("C"):
        return "complex"
    return "integer"


def _kind_of_torch(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_floating_point:
        return "float"
    if dtype.is_complex:
        return "complex"
    return "integer"


def _key_problems(expected: Mapping[str, Any], found: Mapping[str, Any]) -> str:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensor(s): {_few(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s): {_few(unexpected)}")
    wrong = [f"{k} (expected {list(expected[k])}, found {list(found[k])})"
             for k in expected if k in found and expected[k] != found[k]]
    if wrong:
        parts.append(f"wrong shape: {_few(wrong)}")
    return "; ".join(parts)


def _few(items: list[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _load_processors(root: Path, names: list[str]) -> dict[str, Any]:
    pdir = root / PROCESSOR_DIR
    if not (pdir.exists() or pdir.is_symlink()):
        if names:
            raise ReleaseError(f"{pdir}: processor directory missing (config.json lists "
                               f"{', '.join(names)})")
        return {}
    resolved = _contained(root, pdir)
    if not resolved.is_dir():
        raise ReleaseError(f"{pdir}: not a directory")
    for f in sorted(resolved.glob("*.json")):
        _regular_file(root, f"{PROCESSOR_DIR}/{f.name}", "processor", limit=MAX_JSON_BYTES)
    try:
        procs = load_processors(resolved)
    except KeyError as exc:
        raise ReleaseError(f"{pdir}: {exc.args[0] if exc.args else exc}") from None
    except (ValueError, TypeError, OSError) as exc:
        raise ReleaseError(f"{pdir}: {exc}") from None
    missing = sorted(set(names) - set(procs))
    extra = sorted(set(procs) - set(names))
    if missing:
        raise ReleaseError(f"{pdir}: processor file(s) missing for {', '.join(missing)} "
                           f"(listed in config.json)")
    if extra:
        raise ReleaseError(f"{pdir}: unexpected processor file(s) {', '.join(extra)} "
                           f"(not listed in config.json)")
    return procs


def _check_processor_sizes(model: BaseModel, processors: Mapping[str, Any], root: Path) -> None:
    """A processor must fit the weights it came with: an answer space, vocabulary or caption
    vocabulary whose size differs from the hyper-parameter that sized the layers (e.g. a
    checkpoint trained for another answer space) is refused, not silently misread."""
    hparams = model.hparams
    sizes = type(model).processor_sizes
    for name, proc in processors.items():
        try:
            n = len(proc)
        except TypeError:
            continue  # transforms and OCR settings have no size
        if name.startswith("answer_space_"):
            expected = (hparams.get("answer_spaces") or {}).get(name[len("answer_space_"):])
            key = f"answer_spaces[{name[len('answer_space_'):]}]"
        else:
            key = sizes.get(name, "")
            expected = hparams.get(key) if key else None
        if expected is not None and int(expected) != n:
            raise ReleaseError(f"{root / PROCESSOR_DIR / (name + '.json')}: {n} entries but the "
                               f"model was built for {key}={expected}: the processor does not "
                               "belong to these weights")


__all__ = [
    "CONFIG_FILE",
    "FORMAT_VERSION",
    "METRICS_FILE",
    "MODEL_FILE",
    "PROCESSOR_DIR",
    "ReleaseError",
    "load",
    "load_config",
    "load_metrics",
    "save_pretrained",
    "unwrap_model",
]

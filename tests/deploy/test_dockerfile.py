"""docker/Dockerfile and .dockerignore: hadolint with no finding left, every inline ignore
explained, and the structure the deployment relies on (targets, bases, non-root user, health
checks, dependency layers before source layers, the demo model built at build time, a build
context that holds what the COPY instructions need and nothing heavy).

No image is built here (no Docker engine on these machines); what the build runs is checked
piece by piece: docker/requirements.py below, the commands by the compose topology test."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.helpers import (
    DOCKERFILE,
    REPO,
    dockerfile_instructions,
    dockerfile_stages,
    dockerignore_patterns,
    dockerignored,
    exec_form,
    healthcheck_cmd,
    stage_chain,
    tool,
)

TARGETS = ("api", "worker", "trainer")


def _hadolint(path: Path) -> list[dict[str, object]]:
    proc = subprocess.run([tool("hadolint"), "--no-color", "--format", "json", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.stdout.strip(), f"hadolint printed nothing (exit {proc.returncode}): " \
                                f"{proc.stderr}"
    findings: list[dict[str, object]] = json.loads(proc.stdout)
    return findings


def test_hadolint_reports_nothing() -> None:
    """Every level (error, warning, info, style) counts: the list must be empty."""
    findings = _hadolint(DOCKERFILE)
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}"
                                     for f in findings)


def test_hadolint_finds_problems_in_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: an unpinned base, apt without pinning or cleanup, root user."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get update && apt-get install -y curl\n"
                   "RUN cd /tmp && pip install requests\n", encoding="utf-8")
    codes = {f["code"] for f in _hadolint(bad)}
    assert {"DL3006", "DL3008", "DL3003", "DL3013"} <= codes, codes


def test_every_hadolint_ignore_is_explained(tmp_path: Path) -> None:
    """An inline ``# hadolint ignore=RULE`` must follow a comment saying why, and must still be
    needed (the rule fires without it)."""
    lines = DOCKERFILE.read_text(encoding="utf-8").splitlines()
    ignores = [(i, line) for i, line in enumerate(lines) if "hadolint ignore=" in line]
    stripped = "\n".join(line for line in lines if "hadolint ignore=" not in line)
    probe = tmp_path / "Dockerfile"
    probe.write_text(stripped + "\n", encoding="utf-8")
    fired = {str(f["code"]) for f in _hadolint(probe)}
    for i, line in ignores:
        rules = line.split("ignore=", 1)[1].split()[0].split(",")
        above = lines[i - 1].strip() if i > 0 else ""
        assert above.startswith("#") and len(above) > 20 and "hadolint" not in above, \
            f"line {i + 1}: {line.strip()} has no reason comment above it"
        for rule in rules:
            assert rule in fired, f"line {i + 1}: {rule} is ignored but no longer fires"


def test_targets_bases_and_user() -> None:
    stages = dockerfile_stages()
    assert {"base-cpu", "base-cuda", "deps", "demo", "app", *TARGETS} <= set(stages)
    args = {i.args.split("=")[0]: i.args.split("=", 1)[1]
            for i in dockerfile_instructions() if i.keyword == "ARG" and "=" in i.args}
    assert args["BASE"] == "cpu"
    assert stages["deps"].base == "base-${BASE}"
    assert "cuda" in stages["base-cuda"].base.lower() or "CUDA_IMAGE" in stages["base-cuda"].base
    assert "nvidia/cuda:" in args["CUDA_IMAGE"]
    # torch from the matching PyTorch index in each base
    assert "whl/cpu" in " ".join(i.args for i in stages["base-cpu"].instructions)
    assert "whl/cu" in " ".join(i.args for i in stages["base-cuda"].instructions)
    for target in TARGETS:
        for base in ("cpu", "cuda"):
            chain = stage_chain(stages, target, {"BASE": base})
            assert chain[0].name == f"base-{base}", (target, [s.name for s in chain])
            users = [i.args for s in chain for i in s.instructions if i.keyword == "USER"]
            assert users, f"{target}: no USER"
            # numeric (Kubernetes' runAsNonRoot can verify it) and not root
            uid = users[-1].split(":")[0]
            assert uid.isdigit() and int(uid) != 0, users[-1]


def test_each_target_runs_a_documented_command_with_a_health_check() -> None:
    stages = dockerfile_stages()
    cmds = {t: exec_form(stages[t].last("CMD").args) for t in TARGETS}  # type: ignore[union-attr]
    assert cmds["api"][:3] == ["python", "-m", "service"]
    assert cmds["worker"][:4] == ["celery", "-A", "service.worker", "worker"]
    assert cmds["worker"][cmds["worker"].index("--pool") + 1] == "threads"
    assert cmds["trainer"][0] == "torchrun" and "training/train.py" in cmds["trainer"]
    for target in TARGETS:
        assert stages[target].last("ENTRYPOINT") is None, "the command is the CMD, whole"
    assert healthcheck_cmd(stages["api"]) == ["python", "docker/healthcheck.py", "api"]
    assert healthcheck_cmd(stages["worker"]) == ["python", "docker/healthcheck.py", "worker"]
    hc = stages["trainer"].last("HEALTHCHECK")
    assert hc is not None and hc.args == "NONE"  # a batch process: explicitly none
    assert "8000" in stages["api"].last("EXPOSE").args  # type: ignore[union-attr]


def test_dependency_layers_come_before_the_source() -> None:
    """The deps stage copies only pyproject.toml and the requirements script before
    installing; the source is copied after it (in later stages), so a code change never
    reinstalls the dependencies."""
    stages = dockerfile_stages()
    deps = stages["deps"]
    copies = [i for i in deps.instructions if i.keyword == "COPY"]
    assert len(copies) == 1
    sources = copies[0].args.split()[:-1]
    assert sorted(sources) == ["docker/requirements.py", "pyproject.toml"]
    runs = [i for i in deps.instructions if i.keyword == "RUN"]
    assert runs and runs[0].line > copies[0].line and "pip install" in runs[0].args
    for name in ("demo", "app"):
        assert stages[name].base == "deps"
        assert any(i.keyword == "COPY" and i.args.startswith("service/")
                   for i in stages[name].instructions)
    # in the app stage the source is the last thing copied (after the demo model and data)
    app_copies = [i for i in stages["app"].instructions if i.keyword == "COPY"]
    from_demo = [i for i in app_copies if "--from=demo" in i.args]
    source = [i for i in app_copies if "--from" not in i.args]
    assert from_demo and source and max(i.line for i in from_demo) < min(i.line for i in source)


def test_the_demo_model_is_trained_at_build_time() -> None:
    stages = dockerfile_stages()
    run = " ".join(i.args for i in stages["demo"].instructions if i.keyword == "RUN")
    assert "python -m service.demo" in run and "--run-dir /opt/pythia/demo" in run
    app_copies = " ".join(i.args for i in stages["app"].instructions if i.keyword == "COPY")
    assert "--from=demo /opt/pythia/demo/release /opt/pythia/demo/release" in app_copies
    env = " ".join(i.args for i in stages["app"].instructions if i.keyword == "ENV")
    assert "PYTHIA_MODELS=demo=/opt/pythia/demo/release" in env


def test_requirements_script_splits_pyproject() -> None:
    """The deps stage's script: torch + torchvision on one side, everything else on the other,
    together exactly pyproject.toml's dependencies."""
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]

    def run(which: str) -> list[str]:
        proc = subprocess.run([sys.executable, str(REPO / "docker" / "requirements.py"), which,
                               str(REPO / "pyproject.toml")], capture_output=True, text=True,
                              check=True, timeout=30)
        return proc.stdout.split()

    torch, rest = run("torch"), run("rest")
    assert [re.split(r"[<>=!~\[]", t)[0] for t in torch] == ["torch", "torchvision"]
    assert sorted(torch + rest) == sorted(deps)


def test_dockerignore_keeps_what_copy_needs_and_drops_the_heavy_parts() -> None:
    patterns = dockerignore_patterns()
    needed: list[str] = []
    for ins in dockerfile_instructions():
        if ins.keyword == "COPY" and "--from" not in ins.args:
            words = [w for w in ins.args.split() if not w.startswith("--")]
            needed += words[:-1]
    assert needed
    for src in needed:
        path = REPO / src
        assert path.exists(), f"COPY {src}: no such file in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        for f in files:
            rel = f.relative_to(REPO).as_posix()
            assert not dockerignored(rel, patterns), f"{rel} is needed by COPY but ignored"
    for heavy in (".git/HEAD", ".venv/bin/python", "runs/demo/release/config.json",
                  "data/shapes/vqa2/x.jpg", "service/__pycache__/app.cpython-311.pyc",
                  "tests/service/test_app.py", "k8s/base/api.yaml"):
        assert dockerignored(heavy, patterns), f"{heavy} would be sent to the build"
    # root-relative: the ShapesWorld package under training/data is source, not data
    assert not dockerignored("training/data/shapes.py", patterns)


@pytest.mark.parametrize("path,expected", [
    ("data", True), ("data/x/y", True), ("training/data/x.py", False),
    ("a/b/__pycache__/c.pyc", True), ("x.egg-info/PKG-INFO", True),
])
def test_dockerignore_matcher(path: str, expected: bool) -> None:
    """The matcher these checks use follows Docker's rules (root-relative, ``**``, parents)."""
    assert dockerignored(path, dockerignore_patterns()) is expected

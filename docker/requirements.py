"""Print the project's dependencies from pyproject.toml, one requirement a line, for the image's
dependency layer (``docker/Dockerfile``, stage ``deps``).

    python requirements.py torch   torch and torchvision (installed from PyTorch's index, the
                                   CPU or the CUDA build as the base image says)
    python requirements.py rest    every other dependency (from PyPI)

The dependency layer is built from pyproject.toml alone, before any source file is copied, so
editing the code never reinstalls the dependencies: only a change to pyproject.toml does.
Standard library only (tomllib, Python >= 3.11).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH = {"torch", "torchvision"}


def requirement_name(spec: str) -> str:
    """``"uvicorn[standard]>=0.29"`` -> ``"uvicorn"`` (normalized, PEP 503)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    if match is None:
        raise ValueError(f"not a requirement: {spec!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def split(pyproject: Path) -> tuple[list[str], list[str]]:
    data = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    deps: list[str] = list(data["project"]["dependencies"])
    torch = [d for d in deps if requirement_name(d) in TORCH]
    rest = [d for d in deps if requirement_name(d) not in TORCH]
    return torch, rest


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("torch", "rest"):
        print(__doc__, file=sys.stderr)
        return 2
    pyproject = Path(argv[2]) if len(argv) > 2 else Path("pyproject.toml")
    torch, rest = split(pyproject)
    if argv[1] == "torch" and {requirement_name(d) for d in torch} != TORCH:
        print(f"error: {pyproject} must list torch and torchvision", file=sys.stderr)
        return 1
    print("\n".join(torch if argv[1] == "torch" else rest))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

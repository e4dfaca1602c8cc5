"""Container health checks: ``python docker/healthcheck.py api|worker [NODE]``.

Exit status 0 when healthy, 1 otherwise (with the reason on stderr), as Docker's
``HEALTHCHECK``, Compose's ``healthcheck`` and Kubernetes' exec probes expect.

* ``api``: ``GET http://127.0.0.1:$PYTHIA_PORT/readyz`` answers 200: the models are loaded,
  Redis answers (Celery mode) and the process is not draining. Standard library only, so the
  check costs a few milliseconds and no import of torch.
* ``worker``: the Celery worker of this container answers a broadcast ping through the broker
  (``PYTHIA_REDIS_URL``). Its node name is ``worker@<hostname>`` as the worker command gives it
  (``--hostname worker@%h``), or NODE. A worker whose consumer is stuck, or that lost its
  broker, does not answer. Imports only ``service.queue`` (Celery and the settings), not the
  models.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path


def check_api() -> str | None:
    port = os.environ.get("PYTHIA_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            if response.status == 200:
                return None
            return f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}: {exc.read(300).decode(errors='replace')}"
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"


def check_worker(node: str | None = None) -> str | None:
    # run as a file (python docker/healthcheck.py): the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from service.queue import make_celery

    name = node or f"worker@{socket.gethostname()}"
    app = make_celery()
    try:
        replies = app.control.ping(destination=[name], timeout=5.0)
    except Exception as exc:  # the broker is unreachable: unhealthy, whatever the error
        return f"ping {name} through the broker failed: {exc}"
    finally:
        app.close()
    if any(name in reply for reply in replies):
        return None
    return f"worker {name} did not answer a ping within 5 s (replies: {replies})"


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in ("api", "worker"):
        print("usage: python docker/healthcheck.py api|worker [NODE]", file=sys.stderr)
        return 2
    problem = check_api() if argv[1] == "api" else check_worker(argv[2] if len(argv) > 2
                                                               else None)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

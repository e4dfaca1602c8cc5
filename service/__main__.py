"""``python -m service --model RELEASE_DIR [--model NAME=DIR ...] [--host H] [--port P]``

Loads the releases (``PYTHIA_MODELS`` too), validates the settings (``service.settings``;
flags override the environment) and serves the app with uvicorn. Prints the URL when ready.

SIGTERM / SIGINT drain: ``/readyz`` turns 503 at once (load balancers stop sending), the
requests in flight and those queued finish, then the process exits 0. A second signal exits
without waiting.

Exit status 1 with ``error: ...`` for bad settings or a release that does not load.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from pydantic import ValidationError

from service.settings import Settings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m service", description=__doc__.split("\n")[0])
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR",
                   help="a release directory to serve (repeatable); adds to PYTHIA_MODELS")
    p.add_argument("--host", default=None, help="listen address (PYTHIA_HOST)")
    p.add_argument("--port", type=int, default=None, help="listen port (PYTHIA_PORT)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (PYTHIA_DEVICE)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def load_settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    base = Settings()
    if args.model:
        overrides["models"] = [*base.models, *args.model]
    for key in ("host", "port", "device"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return Settings(**overrides) if overrides else base


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_settings(args)
        specs = settings.model_specs()
    except (ValidationError, ValueError) as exc:
        print(f"error: invalid settings: {exc}", file=sys.stderr)
        return 1
    if not specs:
        print("error: no model to serve: pass --model RELEASE_DIR or set PYTHIA_MODELS "
              "(make serve trains a demo model)", file=sys.stderr)
        return 1

    import uvicorn

    from models.release import ReleaseError
    from service.app import create_app
    from service.runners import load_model

    models = {}
    failed: dict[str, str] = {}
    for spec in specs:
        t0 = time.perf_counter()
        try:
            # Celery mode: the workers hold the weights; the API needs only the front.
            models[spec.name] = load_model(spec.name, spec.path, device=settings.device,
                                           weights=settings.queue == "local")
        except (ReleaseError, OSError, ValueError, RuntimeError, KeyError) as exc:
            # Serve the others; /readyz and /models name this one and why.
            print(f"error: model {spec.name!r} ({spec.path}): {exc}", file=sys.stderr)
            failed[spec.name] = str(exc)
            continue
        logging.getLogger("pythia.service").info(
            "loaded %s from %s in %.1f s (tasks: %s)", spec.name, spec.path,
            time.perf_counter() - t0, ", ".join(models[spec.name].front.tasks))
    if not models:
        print("error: no model could be loaded", file=sys.stderr)
        return 1
    app = create_app(settings, models, failed)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=int(settings.request_timeout_s) + 5)
    _draining_server(config, app.state.service).run()
    return 0


def _draining_server(config: Any, state: Any) -> Any:
    """uvicorn's server with a draining first signal: readiness off, wait for the requests in
    flight (at most the request timeout), then uvicorn's own graceful exit; a second signal
    exits at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        signals = 0

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            self.signals += 1
            if self.signals > 1:
                self.force_exit = True
                self.should_exit = True
                return
            state.begin_drain()
            logging.getLogger("pythia.service").info(
                "signal %d: draining (%d request(s) in flight)", sig, state.in_flight)
            threading.Thread(target=self._drain, daemon=True).start()

        def _drain(self) -> None:
            limit = time.monotonic() + float(state.settings.request_timeout_s)
            while state.in_flight > 0 and time.monotonic() < limit:
                time.sleep(0.05)
            self.should_exit = True

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.should_exit:
                return
            host = config.host if config.host not in ("0.0.0.0", "::") else "127.0.0.1"
            port = config.port
            for server in getattr(self, "servers", []) or []:
                for sock in getattr(server, "sockets", []) or []:
                    port = sock.getsockname()[1]
            print(f"Pythia is serving on http://{host}:{port}/ (API docs: /docs)", flush=True)

    return DrainingServer(config)


if __name__ == "__main__":
    sys.exit(main())

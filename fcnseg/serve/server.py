"""Running ``fcnseg serve``: load the models, build the app, serve it with uvicorn and drain on shutdown."""

import ipaddress
import sys

from .._optional import require
from .app import Limits, create_app
from .loading import load_models


def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1): reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(specs: list[str], host: str = "127.0.0.1", port: int = 8000, limits: Limits | None = None,
          device: str = "auto", threads: int | None = None, log_level: str = "info",
          drain_timeout: float = 60.0, backend: str | None = None) -> None:
    """Loads the models and serves the app until interrupted; on SIGTERM/SIGINT, answers what it admitted first.

    Args:
        specs: model names or files (``load_models``); the first is the default.
        host: address to bind; loopback by default. Anything else is reachable from other machines: warned about.
        port: TCP port.
        limits: upload, image and queue limits.
        device: where PyTorch models run.
        threads: torch's intra-op threads (None: torch's default).
        log_level: uvicorn's log level ("warning" hides the per-request lines).
        drain_timeout: seconds to finish admitted requests after a shutdown signal before closing anyway.
        backend: the backend of every model (``load_models``; None: by the file's kind).

    Raises:
        ValueError: a model it cannot serve (``load_models``); OSError: the port cannot be bound.
    """
    import torch

    uvicorn = require("uvicorn", extra="serve", what="fcnseg serve")
    limits = limits or Limits()
    if threads:
        torch.set_num_threads(threads)
    if not is_loopback(host):
        print(f"fcnseg serve: warning: binding {host} makes the app reachable from other machines; it has no "
              "authentication or TLS", file=sys.stderr)
    models = load_models(specs, device, backend)
    app = create_app(models, limits)
    shown = f"[{host}]" if ":" in host else host
    print(f"fcnseg serve: http://{shown}:{port}/ (models: {', '.join(models)}; {limits.workers} worker(s), queue "
          f"{limits.queue}, uploads up to {limits.max_upload_bytes / 2**20:.0f} MiB and "
          f"{limits.max_pixels / 1e6:.0f} Mpixel)", flush=True)
    # limit_concurrency caps open connections too (uvicorn answers 503 beyond it), so idle clients cannot hold
    # unbounded memory either; the queue above is what normally answers first.
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5,
                            limit_concurrency=limits.workers + limits.queue + 64,
                            timeout_graceful_shutdown=drain_timeout)
    _draining_server(config, app.state.lifecycle).run()


def _draining_server(config, lifecycle: dict):
    """A ``uvicorn.Server`` whose shutdown signal first marks the app as draining (``/readyz`` 503, no new
    uploads); uvicorn then closes the listening socket and waits for the admitted requests."""
    uvicorn = require("uvicorn", extra="serve", what="fcnseg serve")

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            lifecycle["draining"] = True
            super().handle_exit(sig, frame)

    return DrainingServer(config)

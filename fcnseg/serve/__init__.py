"""``fcnseg serve``: a local web app and a JSON/PNG API for segmentation (FastAPI + uvicorn).

One page (``GET /``, plain HTML, CSS and JavaScript shipped in ``fcnseg/serve/static/``, nothing fetched from the
network) and an API described by its OpenAPI schema at ``/openapi.json``:

- ``POST /predict``: a multipart upload (``file``, optional ``model``, ``flip``, ``max_size``); JSON with the label
  map as a base64 palette PNG, the share of every class, the size and the time taken, or, with ``?format=png`` or
  ``Accept: image/png``, the label PNG itself.
- ``GET /models``: the loaded models with their classes and palettes.
- ``GET /healthz``: liveness, the queue's state and the upload limits.
- ``GET /readyz``: readiness: 200 once the models are loaded and warmed up and the app has started, 503 while it
  shuts down (load balancers stop sending; what was admitted is finished).
- ``GET /metrics``: Prometheus metrics (``fcnseg.serve.metrics``): requests by endpoint and status, latency and
  model-time histograms, queue depth, images in flight.

Shutting down (SIGTERM or Ctrl-C): the listening socket closes, ``/readyz`` turns 503, new uploads on open
connections get 503, and every admitted request (running or queued) is answered before the process exits, for up
to ``drain_timeout`` seconds.

What protects the host: uploads larger than ``max_upload_bytes`` are refused (413) before they are parsed; the
content is sniffed by Pillow (the file name and the declared type are ignored) and only common photo formats are
accepted (415); images over ``max_pixels`` are refused from their header, before any pixel is decoded (413); at
most ``workers`` images are decoded and segmented at once, in threads so the event loop stays responsive, with at
most ``queue`` more waiting; beyond that requests get 503 with ``Retry-After`` instead of piling up in memory.
Every refusal is JSON ``{"detail": "..."}`` naming the problem, and the server goes on serving.

Parts: ``app`` (``create_app``, ``Limits``, the routes), ``uploads`` (the upload guard), ``workers`` (the bounded
worker pool and the work of one upload), ``batching`` (dynamic batching), ``loading`` (the models served),
``schema`` (the JSON bodies), ``pages`` (the page), ``metrics`` (Prometheus), ``video`` (``POST /predict/video``),
``server`` (uvicorn and the graceful shutdown). Needs the ``serve`` extra: ``pip install 'fcnseg[serve]'``.
"""

from .._optional import require

# Checked before the parts import them, so that a missing package is one line naming the extra.
# (uvicorn is required by ``serve`` itself: the app runs under any ASGI server.)
for _module, _package in (("fastapi", None), ("python_multipart", "python-multipart"),
                          ("prometheus_client", "prometheus-client")):
    require(_module, extra="serve", what="fcnseg serve", package=_package)

from .app import Limits, create_app  # noqa: E402
from .loading import load_models, model_name  # noqa: E402
from .server import is_loopback, serve  # noqa: E402
from .uploads import sniff  # noqa: E402
from .workers import segment  # noqa: E402

__all__ = ["Limits", "create_app", "is_loopback", "load_models", "model_name", "serve", "sniff", "segment"]

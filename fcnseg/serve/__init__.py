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
"""

# No "from __future__ import annotations": FastAPI reads the endpoint annotations, which use local values.

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import logging
import re
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, Field

from ..data.images import ImageError, decode_image
from ..data.palettes import label_image
from ..predict import class_shares, predict_image, probabilities
from .batching import Batcher
from .metrics import MetricsMiddleware, ServeMetrics

STATIC = Path(__file__).resolve().parent / "static"
log = logging.getLogger("fcnseg.serve")

# Formats Pillow may open here, by sniffed content. Others (EPS would run Ghostscript, PSD, ICNS, ...) are refused.
# Multi-picture JPEGs (MPO) open through JPEG's entry. Image.init() registers the plugins first, because
# Image.open(formats=...) looks the names up before loading any plugin beyond the basic ones.
Image.init()
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF") if f in Image.OPEN)
FORMATS_TEXT = "JPEG, PNG, WebP, BMP, TIFF or GIF"
# A body declared larger than the limit is still read (and dropped) up to this many bytes before the 413 is sent,
# so that clients which write the whole request before reading the answer see the 413, not a reset connection.
DRAIN_LIMIT = 256 * 2**20


@dataclass
class Limits:
    """What one server accepts.

    Args:
        max_upload_bytes: largest request body (the multipart upload with its headers).
        max_pixels: largest image, in pixels (width x height from the header: decompression bombs).
        workers: images decoded and segmented at once (each in its own thread; torch parallelises inside).
        queue: requests allowed to wait for a worker; more get 503 with Retry-After.
        max_batch: images of one model and size segmented in one forward pass at most (1: no batching; see
            ``fcnseg.serve.batching``).
        max_delay_ms: how long the first image of a batch waits for others.
    """

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    workers: int = 1
    queue: int = 8
    max_batch: int = 1
    max_delay_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_delay_ms < 0:
            raise ValueError(f"serve: max_delay_ms must be 0 or more; got {self.max_delay_ms}")
        for key in ("max_upload_bytes", "max_pixels", "workers", "max_batch"):
            if getattr(self, key) < 1:
                raise ValueError(f"serve: {key} must be at least 1; got {getattr(self, key)}")
        if self.queue < 0:
            raise ValueError(f"serve: queue must be 0 or more; got {self.queue}")


# ---- response bodies (they make the OpenAPI schema) ----

class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, naming the file or field")


class ClassShare(BaseModel):
    index: int = Field(description="the class's label value in the PNG")
    name: str
    colour: str = Field(description="#rrggbb, the class's colour in the label PNG")
    share: float = Field(description="fraction of the image's pixels given this class (0..1)")


class PredictBody(BaseModel):
    model: str
    filename: str
    format: str = Field(description="the image format sniffed from the content, e.g. JPEG")
    width: int
    height: int
    ms: float = Field(description="milliseconds to decode, segment and encode (excluding the wait in the queue)")
    queue_ms: float = Field(description="milliseconds spent waiting for a worker")
    batch: int = Field(1, description="images segmented in the same forward pass (dynamic batching)")
    shares: list[ClassShare] = Field(description="every class of the model, in label order")
    labels_png: str = Field(description="base64 palette PNG of class indices at the image's size")


class ReadyBody(BaseModel):
    status: Literal["ready"]
    models: list[str]


class ModelBody(BaseModel):
    name: str
    source: str = Field(description="the pretrained name or the file it was loaded from")
    num_classes: int
    classes: list[str]
    palette: list[str] = Field(description="#rrggbb per class")
    default: bool


class HealthBody(BaseModel):
    status: Literal["ok"]
    models: list[str]
    workers: int
    queue: int
    running: int = Field(description="requests now being decoded or segmented")
    waiting: int = Field(description="requests now waiting for a worker")
    served: int = Field(description="images segmented since the start")
    max_upload_bytes: int
    max_pixels: int
    formats: list[str]


ERRORS = {
    400: {"model": ErrorBody, "description": "malformed request (for example an empty file)"},
    413: {"model": ErrorBody, "description": "upload or image too large"},
    415: {"model": ErrorBody, "description": "not an image in an accepted format (sniffed from the content)"},
    422: {"model": ErrorBody, "description": "invalid field, unknown model, or an image that cannot be decoded"},
    503: {"model": ErrorBody, "description": "queue full; retry after the Retry-After header's seconds"},
}


def hex_colour(c) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c[:3]))


class Busy(Exception):
    """The queue is full."""


class Gate:
    """At most ``workers`` jobs at once in a thread pool and ``queue`` more waiting; beyond that ``Busy``.

    The counters are only changed on the event loop's thread, so they need no lock.
    """

    def __init__(self, workers: int, queue: int) -> None:
        self.workers, self.queue = workers, queue
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="fcnseg-model")
        self.pending = 0  # running + waiting
        self.running = 0
        self.served = 0
        self._lock = threading.Lock()  # guards ``running`` (changed in the worker threads)

    async def run(self, fn, *args):
        """``fn(*args)`` in a worker thread; returns ``(result, seconds waited)``. Raises ``Busy`` at once when
        ``workers + queue`` requests are already admitted."""
        if self.pending >= self.workers + self.queue:
            raise Busy
        self.pending += 1
        submitted = time.perf_counter()

        def job():
            started = time.perf_counter()
            with self._lock:
                self.running += 1
            try:
                return fn(*args), started - submitted
            finally:
                with self._lock:
                    self.running -= 1

        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, job)
            self.served += 1
            return result
        finally:
            self.pending -= 1


class Guard:
    """ASGI middleware: refuses request bodies over ``max_bytes`` with 413 (from Content-Length before reading,
    or while reading a body of undeclared length) and adds security headers to every response."""

    HEADERS = [
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        # The page loads only its own files; label PNGs come back as data: URLs, photos and videos (the upload and
        # the overlay video) as blob: URLs.
        (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                                     b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    ]

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self, size: str) -> str:
        return (f"upload too large: {size}, more than the limit of {self.max_bytes / 2**20:.1f} MiB "
                "(fcnseg serve --max-upload-mb)")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [h for h in self.HEADERS if h[0] not in names]
            await send(message)

        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None:
            try:
                declared = int(declared)
            except ValueError:
                return await _send_json(send_with_headers, 400, "invalid Content-Length header")
            if declared > self.max_bytes:
                if declared <= DRAIN_LIMIT:
                    more = True
                    while more:
                        message = await receive()
                        more = message["type"] == "http.request" and message.get("more_body", False)
                return await _send_json(send_with_headers, 413, self._too_large(f"{declared / 2**20:.1f} MiB"))
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised inside the endpoint's body parsing; FastAPI passes HTTPException through as the reply.
                    raise HTTPException(413, self._too_large(f"more than {received / 2**20:.1f} MiB"))
            return message

        await self.app(scope, counted_receive, send_with_headers)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def _safe_name(name: str | None) -> str:
    """The upload's file name as messages and downloads show it: its last part, printable ASCII only."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._ -]", "_", base).strip()[:100]
    return base or "upload"


def sniff(data: bytes, name: str, max_pixels: int) -> tuple[str, int, int]:
    """The format and size of an uploaded image from its header, or the HTTPException that refuses it."""
    if not data:
        raise HTTPException(400, f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit speaks below
            with Image.open(io.BytesIO(data), formats=FORMATS) as im:
                fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError as e:
        raise HTTPException(413, f"{name}: refused as a decompression bomb ({e})") from None
    except Exception:  # noqa: BLE001 - Pillow reports unknown content with assorted exception types
        start = data[:8]
        raise HTTPException(415, f"{name}: not a {FORMATS_TEXT} image, or its header is damaged (the content "
                                 f"starts with {start!r}; the file name and declared type are not trusted)") from None
    if w * h > max_pixels:
        raise HTTPException(413, f"{name}: {w}x{h} is {w * h / 1e6:.1f} Mpixel, more than the limit of "
                                 f"{max_pixels / 1e6:.1f} Mpixel (fcnseg serve --max-pixels)")
    return fmt, w, h


def segment(model, data: bytes, name: str, max_pixels: int, flip: bool, max_size: int | None) -> dict:
    """Decodes and segments one upload (runs in a worker thread): labels, the label PNG and class shares."""
    t = time.perf_counter()
    try:
        image = decode_image(io.BytesIO(data), max_pixels=max_pixels, exif=True, name=name,
                             channels=getattr(model, "in_channels", 3))
    except ImageError as e:
        raise HTTPException(422, str(e)) from None
    labels, _ = predict_image(model, image, flip=flip, max_size=max_size)
    buf = io.BytesIO()
    # compress_level 1: label maps compress well anyway, and level 6 costs 3-4x the time on large images.
    label_image(labels, model.palette).save(buf, format="PNG", compress_level=1)
    shares = class_shares(labels, model.num_classes)
    return {"png": buf.getvalue(), "shares": shares, "width": int(labels.shape[1]), "height": int(labels.shape[0]),
            "ms": 1000 * (time.perf_counter() - t)}


GENERIC_STEMS = ("best", "last", "model", "final", "checkpoint")


def model_name(spec: str) -> str:
    """A model's name in the app and API: a pretrained name as it is; a file's stem, or for the generic stems
    a training run writes (``runs/cells/best.safetensors``) its folder and stem ("cells-best")."""
    if spec.startswith("hf://"):
        return spec[len("hf://"):].split("/")[-1].replace("@", "-")
    if Path(spec).is_dir():
        return Path(spec).resolve().name
    if not spec.endswith((".safetensors", ".onnx", ".xml")):
        return spec
    path = Path(spec)
    if path.stem in GENERIC_STEMS and path.resolve().parent.name:
        return f"{path.resolve().parent.name}-{path.stem}"
    return path.stem


def load_models(specs: list[str], device: str = "auto", backend: str | None = None) -> dict[str, object]:
    """Loads each model once: pretrained names and ``.safetensors`` files (PyTorch), ``.onnx`` files (ONNX Runtime),
    ``.xml`` files (OpenVINO); ``backend`` runs them all with one backend (``fcnseg.backends``).

    Args:
        specs: names or files, the first being the default.
        device: "auto", "cpu", "cuda", ... (PyTorch models only).
        backend: None (by the file's kind) or one of ``fcnseg.backends.BACKENDS``.

    Returns:
        ``{name: model}`` in order; a file's name is ``model_name(file)`` (with -2, -3 ... when two share one).
    """
    from ..backends import default_backend, load
    from ..train import resolve_device

    models: dict[str, object] = {}
    for spec in specs:
        spec = str(spec)
        model = load(spec, resolve_device(device), backend=backend or default_backend(spec))
        if getattr(model, "task", "multiclass") == "multilabel":
            raise ValueError(f"{spec}: a multilabel model (one mask per class); serve answers with one label map "
                             "per image, so it serves multiclass and binary models only (use fcnseg predict)")
        name = model_name(spec)
        base, k = name, 1
        while name in models:
            k += 1
            name = f"{base}-{k}"
        model.source = spec
        import torch

        with torch.inference_mode():
            # warm-up: the first request is not the allocator's
            probabilities(model, torch.rand(1, getattr(model, "in_channels", 3), 64, 64))
        models[name] = model
    if not models:
        raise ValueError("serve: no model given")
    return models


def create_app(models: dict[str, object], limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``models`` (from ``load_models``; the first is the default) under ``limits``.

    Args:
        models: ``{name: model}``; each model has ``num_classes``, ``class_names`` and ``palette``.
        limits: upload, image and queue limits (``Limits()``'s defaults when None).
    """
    limits = limits or Limits()
    if not models:
        raise ValueError("serve: no model given")
    default = next(iter(models))
    gate = Gate(limits.workers, limits.queue)
    state = {"started": False, "draining": False}
    metrics = ServeMetrics(gate, lambda: state["started"] and not state["draining"])

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["started"] = True
        yield
        state["started"] = False
        gate.executor.shutdown(wait=True)  # every admitted request has been answered by now (uvicorn drains first)

    app = FastAPI(title="fcnseg", version="0.1.0", docs_url=None, redoc_url=None,  # the docs pages load CDN files
                  description="Semantic segmentation with Fully Convolutional Networks. Upload an image to "
                              "POST /predict; GET /models lists the classes and colours of each model.",
                  lifespan=lifespan)
    app.state.gate, app.state.metrics, app.state.lifecycle = gate, metrics, state
    batcher = None
    if limits.max_batch > 1:
        batcher = Batcher(gate, limits.max_batch, limits.max_delay_ms / 1000, metrics.batch_size.observe)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # One readable line instead of FastAPI's list of dicts, so every error body has the same schema.
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query"))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", "invalid"))
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("fcnseg serve: internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=HealthBody, summary="liveness, queue state and limits")
    async def healthz() -> dict:
        return {"status": "ok", "models": list(models), "workers": gate.workers, "queue": gate.queue,
                "running": gate.running, "waiting": max(0, gate.pending - gate.running), "served": gate.served,
                "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                "formats": list(FORMATS_TEXT.replace(" or ", ", ").split(", "))}

    _add_ops_routes(app, list(models), state, metrics)

    @app.get("/models", response_model=list[ModelBody], summary="the loaded models, their classes and colours")
    async def list_models() -> list[dict]:
        return [{"name": n, "source": str(getattr(m, "source", n)), "num_classes": m.num_classes,
                 "classes": list(m.class_names), "palette": [hex_colour(c) for c in m.palette],
                 "default": n == default} for n, m in models.items()]

    @app.post("/predict", response_model=PredictBody, summary="segment one uploaded image",
              responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
                               "description": "JSON, or the label PNG with ?format=png or Accept: image/png"},
                         **ERRORS})
    async def predict(
        request: Request,
        file: Annotated[UploadFile, File(description=f"the image ({FORMATS_TEXT}; sniffed from the content)")],
        model: Annotated[str | None, Form(description="a name from GET /models (default: the first)",
                                          json_schema_extra={"enum": list(models)})] = None,
        flip: Annotated[bool, Form(description="also segment the mirrored image and average (slower)")] = False,
        max_size: Annotated[int | None, Form(ge=32, le=16384,
                                             description="segment a copy downscaled to this long side")] = None,
        format: Annotated[Literal["json", "png"] | None, Query(
            description="json (default) or png: the label PNG itself (also with Accept: image/png)")] = None,
    ):
        name = _safe_name(file.filename)
        key = model or default
        if key not in models:
            raise HTTPException(422, f"model: unknown model {key!r}; loaded: {', '.join(models)}")
        # Admission first, so a full server refuses before copying the (spooled) upload into memory.
        refused = _refusal(gate, state, "images")
        if refused is not None:
            return refused
        data = await file.read()
        fmt, _, _ = sniff(data, name, limits.max_pixels)
        try:
            if batcher is not None:
                result, waited = await _batched(gate, batcher, models[key], key, data, name, limits.max_pixels,
                                                flip, max_size)
            else:
                result, waited = await gate.run(segment, models[key], data, name, limits.max_pixels, flip,
                                                max_size)
        except Busy:
            return _busy(gate)
        finally:
            del data
        metrics.observe_image(key, result["ms"] / 1000)
        want_png = format == "png" or (format is None and _prefers_png(request.headers.get("accept", "")))
        if want_png:
            stem = name.rsplit(".", 1)[0].replace(" ", "_") or "upload"
            return Response(result["png"], media_type="image/png", headers={
                "Content-Disposition": f'inline; filename="{stem}_labels.png"',
                "X-Fcnseg-Ms": f"{result['ms']:.1f}", "X-Fcnseg-Queue-Ms": f"{1000 * waited:.1f}",
                "X-Fcnseg-Batch": str(result.get("batch", 1))})
        m = models[key]
        return {"model": key, "filename": name, "format": fmt, "width": result["width"], "height": result["height"],
                "ms": round(result["ms"], 1), "queue_ms": round(1000 * waited, 1), "batch": result.get("batch", 1),
                "shares": [{"index": k, "name": m.class_names[k], "colour": hex_colour(m.palette[k]),
                            "share": round(float(s), 5)} for k, s in enumerate(result["shares"])],
                "labels_png": base64.b64encode(result["png"]).decode("ascii")}

    from .video import add_video_route

    add_video_route(app, models, gate, _busy, lambda: _refusal(gate, state, "videos"), _safe_name,
                    limits.max_pixels, ERRORS)  # POST /predict/video (PyAV)
    app.add_middleware(Guard, max_bytes=limits.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the Guard's refusals too
    return app


def _add_ops_routes(app: FastAPI, names: list[str], state: dict, metrics: ServeMetrics) -> None:
    """``GET /readyz`` (from ``state``: started, draining) and ``GET /metrics`` (Prometheus text)."""

    @app.get("/readyz", response_model=ReadyBody, summary="readiness: models loaded and not shutting down",
             responses={503: {"model": ErrorBody, "description": "starting or shutting down"}})
    async def readyz():
        if state["draining"] or not state["started"]:
            why = "shutting down" if state["draining"] else "starting"
            return JSONResponse({"detail": f"not ready: {why}"}, status_code=503)
        return {"status": "ready", "models": names}

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


async def _batched(gate: Gate, batcher: Batcher, model, key: str, data: bytes, name: str, max_pixels: int,
                   flip: bool, max_size: int | None) -> tuple[dict, float]:
    """``batcher.segment`` counted by the gate as an admitted request (``pending``, ``served``)."""
    if gate.pending >= gate.workers + gate.queue:
        raise Busy
    gate.pending += 1
    try:
        result = await batcher.segment(model, key, data, name, max_pixels, flip, max_size)
        gate.served += 1
        return result
    finally:
        gate.pending -= 1


def _refusal(gate: Gate, state: dict, what: str) -> JSONResponse | None:
    """The 503 for an upload that cannot go in (queue full, or the server shutting down); None if it can."""
    if gate.pending >= gate.workers + gate.queue:
        return _busy(gate)
    if state["draining"]:
        return JSONResponse({"detail": f"shutting down: not taking new {what}"}, status_code=503)
    return None


def _busy(gate: Gate) -> JSONResponse:
    return JSONResponse({"detail": f"busy: {gate.pending} requests are being served or waiting (limit "
                                   f"{gate.workers + gate.queue}); retry shortly"},
                        status_code=503, headers={"Retry-After": "1"})


def _prefers_png(accept: str) -> bool:
    """True when the Accept header asks for image/png and not for JSON."""
    types = [t.split(";")[0].strip().lower() for t in accept.split(",")]
    return "image/png" in types and "application/json" not in types


def is_loopback(host: str) -> bool:
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
        backend: the backend of every model (``load_models``; None: by the file's kind).
        threads: torch's intra-op threads (None: torch's default).
        log_level: uvicorn's log level ("warning" hides the per-request lines).
        drain_timeout: seconds to finish admitted requests after a shutdown signal before closing anyway.
    """
    import torch
    import uvicorn

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
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            lifecycle["draining"] = True
            super().handle_exit(sig, frame)

    return DrainingServer(config)


__all__ = ["Limits", "create_app", "load_models", "serve", "sniff", "segment"]

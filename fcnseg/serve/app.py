"""The FastAPI application of ``fcnseg serve``: ``create_app`` puts the parts together (limits, workers, routes,
middleware). The routes are described in ``fcnseg.serve``'s docstring."""

# No "from __future__ import annotations": FastAPI reads the endpoint annotations, which use local values.

import base64
import contextlib
import logging
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..version import __version__
from .batching import Batcher
from .metrics import MetricsMiddleware, ServeMetrics
from .pages import add_pages
from .schema import ERRORS, ErrorBody, HealthBody, ModelBody, PredictBody, ReadyBody, hex_colour
from .uploads import FORMATS_TEXT, Guard, safe_name, sniff
from .video import add_video_route
from .workers import Busy, Gate, busy, refusal, run_batched, segment

log = logging.getLogger("fcnseg.serve")


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

    Raises:
        ValueError: a limit out of its range, naming it.
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


def create_app(models: dict[str, object], limits: Limits | None = None) -> FastAPI:
    """The FastAPI application serving ``models`` (from ``load_models``; the first is the default) under ``limits``.

    Args:
        models: ``{name: model}``; each model has ``num_classes``, ``class_names`` and ``palette``.
        limits: upload, image and queue limits (``Limits()``'s defaults when None).

    Raises:
        ValueError: no model given.
    """
    limits = limits or Limits()
    if not models:
        raise ValueError("serve: no model given")
    gate = Gate(limits.workers, limits.queue)
    state = {"started": False, "draining": False}
    metrics = ServeMetrics(gate, lambda: state["started"] and not state["draining"])
    app = FastAPI(title="fcnseg", version=__version__, docs_url=None, redoc_url=None,  # the docs pages load CDN files
                  description="Semantic segmentation with Fully Convolutional Networks. Upload an image to "
                              "POST /predict; GET /models lists the classes and colours of each model.",
                  lifespan=_lifespan(gate, state))
    app.state.gate, app.state.metrics, app.state.lifecycle = gate, metrics, state
    batcher = None
    if limits.max_batch > 1:
        batcher = Batcher(gate, limits.max_batch, limits.max_delay_ms / 1000, metrics.batch_size.observe)
    _add_error_handlers(app)
    add_pages(app)
    _add_health_route(app, models, limits, gate)
    _add_ops_routes(app, list(models), state, metrics)
    _add_models_route(app, models)
    _add_predict_route(app, models, limits, gate, state, metrics, batcher)
    add_video_route(app, models, gate, busy, lambda: refusal(gate, state, "videos"), safe_name,
                    limits.max_pixels, ERRORS)  # POST /predict/video (PyAV)
    app.add_middleware(Guard, max_bytes=limits.max_upload_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the Guard's refusals too
    return app


def _lifespan(gate: Gate, state: dict):
    """Marks the app started; at shutdown waits for the worker pool (uvicorn has drained the requests by then)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        state["started"] = True
        yield
        state["started"] = False
        gate.executor.shutdown(wait=True)  # every admitted request has been answered by now (uvicorn drains first)

    return lifespan


def _add_error_handlers(app: FastAPI) -> None:
    """Every error body is ``{"detail": "one line"}``: validation errors joined, crashes named and logged."""

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


def _add_health_route(app: FastAPI, models: dict, limits: Limits, gate: Gate) -> None:
    """``GET /healthz``: liveness, the queue's state and the upload limits."""

    @app.get("/healthz", response_model=HealthBody, summary="liveness, queue state and limits")
    async def healthz() -> dict:
        return {"status": "ok", "models": list(models), "workers": gate.workers, "queue": gate.queue,
                "running": gate.running, "waiting": max(0, gate.pending - gate.running), "served": gate.served,
                "max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                "formats": list(FORMATS_TEXT.replace(" or ", ", ").split(", "))}


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


def _add_models_route(app: FastAPI, models: dict) -> None:
    """``GET /models``: the loaded models with their classes and palettes (the first is the default)."""
    default = next(iter(models))

    @app.get("/models", response_model=list[ModelBody], summary="the loaded models, their classes and colours")
    async def list_models() -> list[dict]:
        return [{"name": n, "source": str(getattr(m, "source", n)), "num_classes": m.num_classes,
                 "classes": list(m.class_names), "palette": [hex_colour(c) for c in m.palette],
                 "default": n == default} for n, m in models.items()]


def _add_predict_route(app: FastAPI, models: dict, limits: Limits, gate: Gate, state: dict, metrics: ServeMetrics,
                       batcher: Batcher | None) -> None:
    """``POST /predict``: one uploaded image, answered as JSON or as the label PNG."""
    default = next(iter(models))

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
        name = safe_name(file.filename)
        key = model or default
        if key not in models:
            raise HTTPException(422, f"model: unknown model {key!r}; loaded: {', '.join(models)}")
        # Admission first, so a full server refuses before copying the (spooled) upload into memory.
        refused = refusal(gate, state, "images")
        if refused is not None:
            return refused
        data = await file.read()
        fmt, _, _ = sniff(data, name, limits.max_pixels)
        try:
            if batcher is not None:
                result, waited = await run_batched(gate, batcher, models[key], key, data, name, limits.max_pixels,
                                                   flip, max_size)
            else:
                result, waited = await gate.run(segment, models[key], data, name, limits.max_pixels, flip,
                                                max_size)
        except Busy:
            return busy(gate)
        finally:
            del data
        metrics.observe_image(key, result["ms"] / 1000)
        if format == "png" or (format is None and prefers_png(request.headers.get("accept", ""))):
            return _png_answer(result, name, waited)
        return _json_answer(result, models[key], key, name, fmt, waited)


def _png_answer(result: dict, name: str, waited: float) -> Response:
    """The label PNG itself, named after the upload, with the timings in headers."""
    stem = name.rsplit(".", 1)[0].replace(" ", "_") or "upload"
    return Response(result["png"], media_type="image/png", headers={
        "Content-Disposition": f'inline; filename="{stem}_labels.png"',
        "X-Fcnseg-Ms": f"{result['ms']:.1f}", "X-Fcnseg-Queue-Ms": f"{1000 * waited:.1f}",
        "X-Fcnseg-Batch": str(result.get("batch", 1))})


def _json_answer(result: dict, m, key: str, name: str, fmt: str, waited: float) -> dict:
    """``PredictBody``: sizes, timings, every class's share and the label PNG in base64."""
    return {"model": key, "filename": name, "format": fmt, "width": result["width"], "height": result["height"],
            "ms": round(result["ms"], 1), "queue_ms": round(1000 * waited, 1), "batch": result.get("batch", 1),
            "shares": [{"index": k, "name": m.class_names[k], "colour": hex_colour(m.palette[k]),
                        "share": round(float(s), 5)} for k, s in enumerate(result["shares"])],
            "labels_png": base64.b64encode(result["png"]).decode("ascii")}


def prefers_png(accept: str) -> bool:
    """True when the Accept header asks for image/png and not for JSON."""
    types = [t.split(";")[0].strip().lower() for t in accept.split(",")]
    return "image/png" in types and "application/json" not in types

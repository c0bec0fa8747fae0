"""``fcnseg serve``'s Prometheus metrics (prometheus-client), one registry per app.

Exposed at ``GET /metrics`` in the Prometheus text format:

- ``fcnseg_requests_total{endpoint, status}``: answered requests (every endpoint, every status, refusals included).
- ``fcnseg_request_seconds{endpoint}``: latency histogram, from the first byte received to the last byte sent.
- ``fcnseg_model_seconds{model}``: time to decode, segment and encode one image in a worker (no queue wait).
- ``fcnseg_queue_depth``: requests admitted and waiting for a worker, now.
- ``fcnseg_images_in_flight``: images being decoded or segmented, now.
- ``fcnseg_images_total{model}``: images segmented.
- ``fcnseg_batch_size``: images per forward pass with dynamic batching (``--max-batch``).
- ``fcnseg_ready``: 1 when the models are loaded and the server is not shutting down (what ``/readyz`` says).
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Latency buckets (seconds): from a health check to a large image on a CPU.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENDPOINTS = ("/", "/predict", "/models", "/healthz", "/readyz", "/metrics", "/openapi.json")


class ServeMetrics:
    """The metrics of one app; ``gate`` (``fcnseg.serve.workers.Gate``) and ``ready`` (a no-argument callable) are read
    at scrape time."""

    def __init__(self, gate, ready) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.requests = Counter("fcnseg_requests", "answered HTTP requests", ["endpoint", "status"], registry=r)
        self.latency = Histogram("fcnseg_request_seconds", "request latency, first byte in to last byte out",
                                 ["endpoint"], buckets=BUCKETS, registry=r)
        self.model_time = Histogram("fcnseg_model_seconds", "decode + segment + encode time of one image",
                                    ["model"], buckets=BUCKETS, registry=r)
        self.images = Counter("fcnseg_images", "images segmented", ["model"], registry=r)
        self.batch_size = Histogram("fcnseg_batch_size", "images per forward pass (--max-batch)",
                                    buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        Gauge("fcnseg_queue_depth", "requests waiting for a worker", registry=r).set_function(
            lambda: max(0, gate.pending - gate.running))
        Gauge("fcnseg_images_in_flight", "images being decoded or segmented", registry=r).set_function(
            lambda: gate.running)
        Gauge("fcnseg_ready", "1 when ready to serve (models loaded, not shutting down)", registry=r).set_function(
            lambda: 1.0 if ready() else 0.0)

    def observe_image(self, model: str, seconds: float) -> None:
        self.model_time.labels(model).observe(seconds)
        self.images.labels(model).inc()

    def render(self) -> tuple[bytes, str]:
        """The body and content type of a scrape."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """ASGI middleware counting every HTTP answer by endpoint and status, and timing it. Paths outside
    ``ENDPOINTS`` count as "other" (static files, unknown paths), so label values stay few."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/static" if path.startswith("/static/") else "other")
        start, status = time.perf_counter(), 500

        async def recording_send(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

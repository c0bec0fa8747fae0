"""The model workers of ``fcnseg serve``: a bounded thread pool (``Gate``), the work one upload takes in it
(``segment``), and the 503 answers when no more can be admitted."""

import asyncio
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from ..data.images import ImageError, decode_image
from ..data.palettes import label_image
from ..models.inference import predict_image
from ..predict import class_shares


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


async def run_batched(gate: Gate, batcher, model, key: str, data: bytes, name: str, max_pixels: int,
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


def refusal(gate: Gate, state: dict, what: str) -> JSONResponse | None:
    """The 503 for an upload that cannot go in (queue full, or the server shutting down); None if it can."""
    if gate.pending >= gate.workers + gate.queue:
        return busy(gate)
    if state["draining"]:
        return JSONResponse({"detail": f"shutting down: not taking new {what}"}, status_code=503)
    return None


def busy(gate: Gate) -> JSONResponse:
    """The 503 with Retry-After for a full queue."""
    return JSONResponse({"detail": f"busy: {gate.pending} requests are being served or waiting (limit "
                                   f"{gate.workers + gate.queue}); retry shortly"},
                        status_code=503, headers={"Retry-After": "1"})

"""Dynamic batching for ``fcnseg serve --max-batch N --max-delay-ms T``.

Uploads are decoded in the worker pool as usual; an image that is segmented whole (not tiled, no ``max_size``)
then waits up to ``max_delay`` seconds for others of the same model, ``flip`` and size, and up to ``max_batch``
of them go through the model in one forward pass (``(N, 3, H, W)`` float32 in [0, 1] -> ``(N, C, H, W)``
probabilities). Other images run alone at once. Each answer is encoded as without batching (label PNG, shares).

Batched scores equal the unbatched ones up to float rounding (a convolution over N images may sum in another
order), so labels can differ only where two classes tie to the last bits.
"""

from __future__ import annotations

import asyncio
import io
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from fastapi import HTTPException

from ..data.images import ImageError, decode_image, to_float, to_tensor
from ..data.palettes import label_image
from ..models.inference import TILE, label_dtype, predict_image, probabilities
from ..predict import class_shares


def decode(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """The upload as ``HxWx3`` uint8 RGB, upright per EXIF; ``HTTPException(422)`` naming it when undecodable."""
    try:
        return decode_image(io.BytesIO(data), max_pixels=max_pixels, exif=True, name=name)
    except ImageError as e:
        raise HTTPException(422, str(e)) from None


def encode(model, labels: np.ndarray, started: float, batch: int) -> dict:
    """What ``fcnseg.serve.workers.segment`` returns, for labels computed in a batch of ``batch`` images."""
    buf = io.BytesIO()
    label_image(labels, model.palette).save(buf, format="PNG", compress_level=1)
    return {"png": buf.getvalue(), "shares": class_shares(labels, model.num_classes), "width": int(labels.shape[1]),
            "height": int(labels.shape[0]), "ms": 1000 * (time.perf_counter() - started), "batch": batch}


@dataclass
class _Waiting:
    images: list[np.ndarray] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)
    submitted: list[float] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Groups whole-image requests of one model, flip and size into batches, run on ``gate``'s worker pool.

    Args:
        gate: the app's ``Gate`` (its executor runs decodes and batches; ``running`` counts images in batches).
        max_batch: images per forward pass at most (>= 1).
        max_delay: seconds the first image of a batch waits for others.
        on_batch: called with each batch's size (metrics).
    """

    def __init__(self, gate, max_batch: int, max_delay: float, on_batch=None) -> None:
        self.gate, self.max_batch, self.max_delay = gate, max_batch, max_delay
        self.on_batch = on_batch or (lambda n: None)
        self.waiting: dict[tuple, _Waiting] = {}

    async def segment(self, model, model_name: str, data: bytes, name: str, max_pixels: int, flip: bool,
                      max_size: int | None) -> tuple[dict, float]:
        """Decodes and segments one upload; returns ``(result, seconds waited for a batch to start)``."""
        loop = asyncio.get_running_loop()
        submitted = time.perf_counter()
        image = await loop.run_in_executor(self.gate.executor, decode, data, name, max_pixels)
        h, w = image.shape[:2]
        if (max_size and max(h, w) > max_size) or h * w > TILE * TILE:
            return await loop.run_in_executor(self.gate.executor, self._alone, model, image, flip, max_size,
                                              submitted)
        key = (model_name, flip, h, w)
        entry = self.waiting.setdefault(key, _Waiting())
        future = loop.create_future()
        entry.images.append(image)
        entry.futures.append(future)
        entry.submitted.append(submitted)
        if len(entry.images) >= self.max_batch:
            self._flush(key, model)
        elif entry.timer is None:
            entry.timer = loop.call_later(self.max_delay, self._flush, key, model)
        return await future

    def _alone(self, model, image, flip, max_size, submitted) -> tuple[dict, float]:
        started = time.perf_counter()
        with self.gate._lock:
            self.gate.running += 1
        try:
            labels, _ = predict_image(model, image, flip=flip, max_size=max_size)
            self.on_batch(1)
            return encode(model, labels, started, 1), started - submitted
        finally:
            with self.gate._lock:
                self.gate.running -= 1

    def _flush(self, key: tuple, model) -> None:
        entry = self.waiting.pop(key, None)
        if entry is None:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        asyncio.ensure_future(self._run(model, key[1], entry))

    async def _run(self, model, flip: bool, entry: _Waiting) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self.gate.executor, self._batch, model, entry.images, flip)
        except Exception as e:  # noqa: BLE001 - every waiting request gets the error (500 via the app's handler)
            for f in entry.futures:
                if not f.done():
                    f.set_exception(e)
            return
        for f, (result, started), submitted in zip(entry.futures, results, entry.submitted):
            if not f.done():
                f.set_result((result, started - submitted))

    def _batch(self, model, images: list[np.ndarray], flip: bool) -> list[tuple[dict, float]]:
        started = time.perf_counter()
        with self.gate._lock:
            self.gate.running += len(images)
        try:
            x = torch.stack([to_float(to_tensor(a)) for a in images])
            with torch.inference_mode():
                labels = probabilities(model, x, flip).argmax(1).numpy().astype(label_dtype(model.num_classes))
            self.on_batch(len(images))
            return [(encode(model, labels[k], started, len(images)), started) for k in range(len(images))]
        finally:
            with self.gate._lock:
                self.gate.running -= len(images)

"""Inference of any model on images of any size: scores, class probabilities and label maps, tiled.

An FCN takes a whole image at once. Images with more pixels than ``tile * tile`` are cut into overlapping
``tile x tile`` windows whose probabilities are blended with weights that fall off towards each window's edge,
so seams don't show; windows are processed one row at a time and finished rows are written out, so memory stays
bounded by the tile size and the image width, whatever the height.

``model`` is anything that maps an ``(N, C, H, W)`` float tensor in [0, 1] to ``(N, K, H, W)`` scores and has
``num_classes`` (and optionally ``task``, ``threshold``, ``in_channels``): an ``FCN`` or an exported model.
``FCN.predict`` and the ``fcnseg.predict`` job are built on ``predict_image`` and ``probabilities``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .. import tasks
from ..data.images import to_float, to_tensor
from ..tta import model_scales, tta_probabilities

TILE = 1024  # windows of 1 Mpixel keep VGG16's activations near 1.5 GB and Lite0's far below
OVERLAP = 128


def forward(model, x: torch.Tensor) -> torch.Tensor:
    """Scores ``(N, K, H, W)`` of a float ``(N, C, H, W)`` batch in [0, 1], moved to the model's device, dtype and
    memory format first (an ``nn.Module``; other models get the batch as it is)."""
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters())
        conv = next((p for p in model.parameters() if p.dim() == 4), param)
        fmt = torch.channels_last if (conv.is_contiguous(memory_format=torch.channels_last)
                                      and not conv.is_contiguous()) else torch.contiguous_format
        x = x.to(param.device, param.dtype).contiguous(memory_format=fmt)
    return model(x)


def probabilities(model, x: torch.Tensor, flip: bool = False, scales=None) -> torch.Tensor:
    """Class probabilities ``(N, C, H, W)`` (float32, CPU) of a float batch: softmax, or for a binary model
    ``[1 - p, p]``, for a multilabel one the K sigmoids (``fcnseg.tasks.probabilities``); ``flip`` and
    ``scales`` average them over the mirrored images and the input scales (``fcnseg.tta.tta_probabilities``)."""
    scales = model_scales(model, scales)
    return tta_probabilities(lambda t: forward(model, t), x, _task(model)[0], scales, flip).cpu()


def _task(model) -> tuple[str, float]:
    return getattr(model, "task", "multiclass"), getattr(model, "threshold", 0.5)


def decide_labels(model, p: torch.Tensor, dim: int) -> torch.Tensor:
    """Labels (int64) from probabilities along ``dim`` (``probabilities``' output, or for multiclass and binary
    models their unnormalised weighted sums) by the model's task and threshold (``fcnseg.tasks.decide``)."""
    task, threshold = _task(model)
    return tasks.decide(p, task, threshold, dim)


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step))
    return starts + [n - tile]


def _ramp(n: int, overlap: int) -> torch.Tensor:
    # 1 inside, falling linearly over ``overlap`` pixels at both ends; never 0, so every pixel has weight.
    if overlap <= 0:
        return torch.ones(n)
    i = torch.arange(n, dtype=torch.float32)
    return torch.minimum(i + 1, n - i).div(overlap + 1).clamp(max=1.0)


def label_dtype(num_classes: int):
    """The numpy dtype of label maps: uint8 up to 256 classes (PNG-writable), else int32."""
    return np.uint8 if num_classes <= 256 else np.int32


@torch.inference_mode()
def predict_image(model, image, *, tile: int | tuple[int, int] | None = TILE, overlap: int = OVERLAP,
                  flip: bool = False, batch_size: int = 1, max_size: int | None = None,
                  return_probs: bool = False, scales=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Segments one image of any size.

    Args:
        model: an ``FCN`` or ``OnnxModel`` (see the module docstring).
        image: a path, PIL image, ``HxWx3`` array (uint8, uint16 or float in [0, 1]) or ``(3, H, W)`` tensor.
        tile: images with more than ``tile * tile`` pixels are segmented in overlapping ``tile x tile``
            windows; a pair ``(H, W)``: images taller than H or wider than W are segmented in ``H x W`` windows
            (sliding-window evaluation); None segments every image whole.
        overlap: pixels shared by neighbouring windows (blended).
        flip: also segment the mirrored image and average the probabilities.
        scales: input scales whose probabilities are averaged (``fcnseg.tta``; None: the model's ``test_scale``,
            1.0 unless chosen on val), per window.
        batch_size: windows per forward pass.
        max_size: segment a copy downscaled to this long side, then bring labels back to full size.
        return_probs: also return the ``(C, H, W)`` float16 class probabilities.

    Returns:
        ``(labels, probs)``: ``HxW`` labels (uint8 up to 256 classes; a multilabel model's are ``KxHxW``, 0/1
        per class) and the probabilities or None.

    Raises:
        FileNotFoundError, fcnseg.data.images.ImageError, ValueError, TypeError: an image ``to_tensor`` cannot
            read (a file is named).
    """
    x = to_tensor(image, getattr(model, "in_channels", 3))
    scales = model_scales(model, scales)
    h0, w0 = x.shape[-2:]
    if max_size and max(h0, w0) > max_size:
        s = max_size / max(h0, w0)
        size = (max(1, round(h0 * s)), max(1, round(w0 * s)))
        x = F.interpolate(to_float(x)[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        labels, probs = _tiled(model, x, tile, overlap, flip, batch_size, return_probs=True, scales=scales)
        up = F.interpolate(torch.from_numpy(probs.astype(np.float32))[None], size=(h0, w0), mode="bilinear",
                           align_corners=False)[0]
        return decide_labels(model, up, 0).numpy().astype(labels.dtype), (up.half().numpy() if return_probs else None)
    return _tiled(model, x, tile, overlap, flip, batch_size, return_probs, scales)


def window(h: int, w: int, tile: int | tuple[int, int] | None) -> tuple[int, int]:
    """The window an ``h x w`` image is segmented in: the whole image unless it exceeds ``tile`` (an area
    ``tile * tile``, or a pair ``(H, W)`` exceeded in either side)."""
    if isinstance(tile, (tuple, list)):
        return (min(tile[0], h), min(tile[1], w)) if h > tile[0] or w > tile[1] else (h, w)
    return (min(tile, h), min(tile, w)) if tile and h * w > tile * tile else (h, w)


def _tiled(model, x: torch.Tensor, tile: int | tuple[int, int] | None, overlap: int, flip: bool, batch_size: int,
           return_probs: bool, scales=None) -> tuple[np.ndarray, np.ndarray | None]:
    c = model.num_classes
    _, h, w = x.shape
    th, tw = window(h, w, tile)
    if (getattr(model, "label_output", False) and (th, tw) == (h, w) and not (flip or return_probs)
            and list(scales or [1.0]) == [1.0]):  # an exported graph's uint8 argmax: no scores to move
        return model.predict_labels(to_float(x)[None])[0].numpy().astype(label_dtype(c)), None
    overlap = max(0, min(overlap, th - 1, tw - 1))
    ys, xs = _starts(h, th, overlap), _starts(w, tw, overlap)
    weight = torch.outer(_ramp(th, overlap if len(ys) > 1 else 0), _ramp(tw, overlap if len(xs) > 1 else 0))
    multilabel = _task(model)[0] == "multilabel"
    labels = np.empty((c, h, w) if multilabel else (h, w), label_dtype(c))
    probs = np.empty((c, h, w), np.float16) if return_probs else None
    # Running sums over the band of rows the current row of windows covers.
    acc, wsum = torch.zeros(c, th, w), torch.zeros(th, w)
    for i, y0 in enumerate(ys):
        for j in range(0, len(xs), batch_size):
            cols = xs[j:j + batch_size]
            batch = torch.stack([to_float(x[:, y0:y0 + th, x0:x0 + tw]) for x0 in cols])
            p = probabilities(model, batch, flip, scales)
            for k, x0 in enumerate(cols):
                acc[:, :, x0:x0 + tw] += p[k] * weight
                wsum[:, x0:x0 + tw] += weight
        # Rows above the next window row get no more contributions: finish them and slide the band in place
        # (only the overlap rows move). Dividing by the weights does not change the argmax (nor the binary
        # decision, a ratio of the two channels), so labels skip it.
        y1 = ys[i + 1] if i + 1 < len(ys) else h
        n = y1 - y0
        labels[..., y0:y1, :] = decide_labels(model, acc[:, :n] / wsum[:n] if multilabel else acc[:, :n], 0).numpy()
        if probs is not None:
            probs[:, y0:y1] = (acc[:, :n] / wsum[:n]).numpy()
        acc[:, :th - n] = acc[:, n:].clone()
        acc[:, th - n:] = 0
        wsum[:th - n] = wsum[n:].clone()
        wsum[th - n:] = 0
    return labels, probs

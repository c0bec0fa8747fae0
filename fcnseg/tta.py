"""Test-time augmentation as segmentation papers evaluate: multi-scale inputs and the horizontal flip.

The image is segmented at each scale (resized bilinearly), the class probabilities (softmax; the sigmoid for
binary and multilabel models, see ``fcnseg.tasks.probabilities``) are resized back to the input's size
bilinearly, and all of them, with those of the mirrored image when ``flip``, are averaged (DeepLab's and
mmsegmentation's ``aug_test``: average of the probabilities of every scale and flip). Every caller (``fcnseg
evaluate``, ``fcnseg predict``, ``FCN.predict``, the windows of large images) goes through ``tta_probabilities``.

A model whose forward pads its input (``alignment="legacy"`` models pad to a multiple of 32) keeps doing so at
every scale: the resized image goes through the model's own forward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from . import tasks

SCALES = (1.0,)
PAPER_SCALES = (0.75, 1.0, 1.25, 1.5)  # the usual multi-scale set (DeepLab, PSPNet, mmsegmentation)


def check_scales(scales: Sequence[float] | None) -> tuple[float, ...]:
    """``scales`` as a tuple of floats (None: ``(1.0,)``).

    Raises:
        ValueError: an empty list, or a scale that is not a positive finite number (named).
    """
    if scales is None:
        return SCALES
    out = tuple(float(s) for s in scales)
    if not out:
        raise ValueError("scales: give at least one scale (1.0 is the image as it is)")
    bad = [s for s in out if not (s > 0 and s != float("inf"))]
    if bad:
        raise ValueError(f"scales: each scale must be a positive number (1.0: the image as it is); got {bad[0]}")
    return out


def model_scales(model, scales: Sequence[float] | None) -> tuple[float, ...]:
    """The scales ``model`` is run at: ``scales`` where given, else the model's own ``test_scale`` alone (1.0
    for a model without one; ``fcnseg.models.spec.ModelSpec.test_scale``).

    Raises:
        ValueError: see ``check_scales``.
    """
    return check_scales(scales if scales is not None else [getattr(model, "test_scale", 1.0)])


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The input size at ``scale``: rounded, at least one pixel."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def tta_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, task: str = "multiclass",
                      scales: Sequence[float] | None = None, flip: bool = False) -> torch.Tensor:
    """Class probabilities of a batch, averaged over scales and the horizontal flip.

    Args:
        forward: maps an ``(N, C_in, h, w)`` float batch to scores ``(N, K, h, w)`` at its size (an ``FCN``).
        x: ``(N, C_in, H, W)`` float images (in [0, 1] for an FCN).
        task: the model's task ("multiclass": softmax; "binary": ``[1 - p, p]``; "multilabel": K sigmoids).
        scales: input scales (None: 1.0 alone); each is ``round(H * s) x round(W * s)``.
        flip: also segment the mirrored images (at every scale) and mirror their probabilities back.

    Returns:
        ``(N, C, H, W)`` float32 probabilities (C: 2 for binary), on the device ``forward`` returns on; the mean
        of ``len(scales) * (2 if flip else 1)`` passes.

    Raises:
        ValueError: a scale that is not positive.
    """
    scales = check_scales(scales)
    height, width = x.shape[-2:]
    total, count = None, 0
    for scale in scales:
        size = scaled_size(height, width, scale)
        xs = x if size == (height, width) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                             antialias=scale < 1)
        for mirrored in (False, True) if flip else (False,):
            p = tasks.probabilities(forward(xs.flip(-1) if mirrored else xs), task).float()
            p = p.flip(-1) if mirrored else p
            if size != (height, width):
                p = F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)
            total = p if total is None else total.add_(p)
            count += 1
    return total.div_(count)


def tta_record(scales: Sequence[float] | None, flip: bool, window: Sequence[int] | None = None,
               overlap: int | None = None) -> dict:
    """What ``metrics.json`` records of the evaluation's test-time augmentation and windows."""
    return {"scales": list(check_scales(scales)), "flip": bool(flip),
            "window": list(window) if window else None, "overlap": int(overlap) if window else None}

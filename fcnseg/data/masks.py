"""What the values in a folder of grey or palette masks mean, read from the values themselves.

``infer_mapping`` takes the histogram of raw mask values over a dataset (256 pixel counts) and decides:

- {0, 1} or {0, 255}: a binary task, 0 = background (class 0), 1 or 255 = object (class 1), nothing ignored;
- k evenly spaced grey levels (0/64/128/192, 0/85/170/255, ...): k classes, in the order of their values;
- values that look like lossy-compression noise (a few levels holding nearly every pixel, with many rare values
  around them, as JPEG masks have): refused, unless the description asks for ``snap: true`` (each value goes
  to the nearest level) or ``mask_threshold: T`` (values >= T are class 1, the others class 0);
- anything else: the values are the labels (classes 0..max), 255 is ignored (VOC's boundary label).

The result is a ``Mapping``: class names, a raw value -> label table and the ``dataset.yaml`` keys that give
the same mapping explicitly, so a run can be repeated without inferring again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IGNORE = 255
# A value holding at least this share of the pixels is a level; rarer values near levels are noise.
LEVEL_SHARE = 0.01
PEAK_RADIUS = 8


class MaskValueError(ValueError):
    """The mask values cannot be read without help from the description (the message says which keys)."""


@dataclass
class Mapping:
    """How raw mask values become labels.

    Attributes:
        kind: "binary", "levels" (evenly spaced grey levels), "labels" (values are labels), "snapped"
            (lossy values snapped to levels), "threshold" or "described" (the description gave the classes).
        classes: the class names.
        lut: int64 array of 256: raw value -> label in ``[0, len(classes))`` or 255 (ignored).
        options: ``dataset.yaml`` keys that give this mapping explicitly (empty for "described").
        note: one line saying what was inferred, for the summary.
    """

    kind: str
    classes: list[str]
    lut: np.ndarray
    options: dict
    note: str


def levels_of(hist: np.ndarray) -> list[int]:
    """The peaks of the histogram: values holding at least ``LEVEL_SHARE`` of the pixels and more than any
    value within ``PEAK_RADIUS`` (the intended levels of a lossy mask, each with its noise around it)."""
    hist = np.asarray(hist, np.int64)
    total = max(int(hist.sum()), 1)
    local_max = np.lib.stride_tricks.sliding_window_view(np.pad(hist, PEAK_RADIUS), 2 * PEAK_RADIUS + 1).max(1)
    return [int(v) for v in np.flatnonzero((hist >= LEVEL_SHARE * total) & (hist == local_max))]


def looks_lossy(hist: np.ndarray) -> bool:
    """Whether the values look like a few levels blurred by lossy compression: peaks (``levels_of``) at least
    16 apart, at least twice as many values as peaks (and 4 more), the peak values holding half the pixels and
    the values within 2 of them 70%. Label masks with many classes fail at least one of these."""
    hist = np.asarray(hist, np.int64)
    values, levels = np.flatnonzero(hist), levels_of(hist)
    if not levels or len(values) < max(2 * len(levels), len(levels) + 4):
        return False
    if len(levels) > 1 and np.diff(levels).min() < 16:
        return False
    total = hist.sum()
    near = sum(int(hist[max(0, v - 2):v + 3].sum()) for v in levels)
    return bool(hist[levels].sum() >= 0.5 * total and near >= 0.7 * total)


def evenly_spaced(values: list[int]) -> bool:
    """At least 2 values, more than 1 apart, with equal steps (within 1: 0/85/170/255, 0/127/255)."""
    if len(values) < 2:
        return False
    steps = np.diff(values)
    return bool(steps.min() >= 2 and steps.max() - steps.min() <= 1)


def nearest_level_lut(levels: list[int]) -> np.ndarray:
    """raw value -> index of the nearest level (ties go to the lower level)."""
    lv = np.asarray(sorted(levels))
    return np.abs(np.arange(256)[:, None] - lv[None, :]).argmin(1).astype(np.int64)


def _names(k: int) -> list[str]:
    return ["background", "object"] if k == 2 else [str(i) for i in range(k)]


def _levels_text(values) -> str:
    return "/".join(str(int(v)) for v in values)


def from_levels(levels: list[int], kind: str = "levels", classes: list[str] | None = None) -> Mapping:
    """Grey levels -> classes 0..k-1 in the order of their values.

    ``kind`` "levels": exactly these values are remapped (other values map to themselves and are then checked
    like any label); "snapped": every value 0..255 goes to its nearest level.
    """
    levels = sorted(int(v) for v in levels)
    k = len(levels)
    classes = list(classes) if classes else _names(k)
    note = f"grey levels {_levels_text(levels)} -> classes 0..{k - 1} in order"
    if kind == "snapped":
        note += " (every other value snapped to the nearest level)"
        return Mapping(kind, classes, nearest_level_lut(levels), {"classes": classes, "levels": levels}, note)
    lut = np.arange(256, dtype=np.int64)
    lut[levels] = np.arange(k)
    remap = {v: i for i, v in enumerate(levels) if v != i}
    return Mapping(kind, classes, lut, {"classes": classes, "remap": remap}, note)


def from_threshold(threshold: float) -> Mapping:
    """Values >= ``threshold`` -> class 1 (object), the others class 0 (background)."""
    lut = (np.arange(256) >= threshold).astype(np.int64)
    return Mapping("threshold", _names(2), lut, {"classes": _names(2), "mask_threshold": threshold},
                   f"values >= {threshold:g} -> class 1 (object), below -> class 0 (background)")


def infer_mapping(hist: np.ndarray, snap: bool = False) -> Mapping:
    """The mapping of raw mask values whose histogram (256 pixel counts) is ``hist``; see the module docstring.

    Raises:
        MaskValueError: the values look like lossy-compression noise and ``snap`` is off; the message names
            the ``dataset.yaml`` lines that fix it.
    """
    hist = np.asarray(hist, dtype=np.int64)
    values = [int(v) for v in np.flatnonzero(hist)]
    if set(values) <= {0, 1} or set(values) <= {0, 255}:
        top = 255 if 255 in values else 1
        lut = np.arange(256, dtype=np.int64)
        lut[top] = 1
        remap = {top: 1} if top == 255 else {}
        return Mapping("binary", _names(2), lut, {"classes": _names(2), "remap": remap},
                       f"binary: 0 -> class 0 (background), {top} -> class 1 (object)")
    if looks_lossy(hist):
        levels = levels_of(hist)
        if snap:
            return from_levels(levels, "snapped")
        rare = len(values) - len(levels)
        mid = (levels[0] + levels[-1]) // 2 + 1 if len(levels) > 1 else 128
        raise MaskValueError(
            f"the masks hold {len(values)} values: levels {_levels_text(levels)} and {rare} rarer values around "
            f"them, which look like lossy-compression noise (JPEG masks?); save the masks as PNG, or add "
            f"'snap: true' (each value to the nearest level) or 'mask_threshold: {mid}' (binary) to dataset.yaml "
            f"(if the values are labels, give 'classes' there)")
    if evenly_spaced(values):
        return from_levels(values)
    labels = [v for v in values if v != IGNORE]
    k = max([1, *labels]) + 1
    lut = np.arange(256, dtype=np.int64)
    ignored = " (255 ignored)" if IGNORE in values else ""
    names = [str(i) for i in range(k)]
    return Mapping("labels", names, lut, {"classes": names},
                   f"values are labels: classes 0..{k - 1}{ignored}")

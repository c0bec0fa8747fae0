"""Joint image/label transforms on torchvision's transforms v2.

Images are ``tv_tensors.Image`` and labels ``tv_tensors.Mask``, so v2 resizes labels with nearest-neighbour
and leaves them out of colour jitter. Crops pad images with 0 and labels with 255 (ignored).
"""

from __future__ import annotations

import random

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .datasets import IGNORE


class RandomScale(v2.Transform):
    """Resizes image and labels by one factor drawn uniformly from ``scale`` (labels: nearest-neighbour)."""

    def __init__(self, scale: tuple[float, float] = (0.5, 2.0)) -> None:
        super().__init__()
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale range must satisfy 0 < lo <= hi; got {scale}")
        self.scale = (float(scale[0]), float(scale[1]))

    def make_params(self, flat_inputs: list) -> dict:
        h, w = next(F.get_size(x) for x in flat_inputs if isinstance(x, (tv_tensors.Image, tv_tensors.Mask)))
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * float(torch.rand(()))
        return {"size": [max(1, round(h * s)), max(1, round(w * s))]}

    def transform(self, inpt, params: dict):
        if isinstance(inpt, tv_tensors.Mask):
            return F.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        return F.resize(inpt, params["size"], antialias=True)


class RareClassCrop(v2.Transform):
    """A random ``(H, W)`` crop that, with probability ``p``, is placed to contain one pixel of a class drawn by
    ``class_weights`` among the classes in the image (uniform among that class's pixels, the pixel anywhere in
    the crop); otherwise, and where the labels are not one ``(H, W)`` map, a uniform random crop. Images
    smaller than the crop are padded at bottom/right (image 0, labels 255), as ``pad_collate`` does.

    Thin and rare classes (CamVid's poles, signs, bicyclists) then fill crops more often than their pixel share
    gives them: class-balanced crop sampling, after the rare-class sampling of Hoyer et al., "DAFormer" (CVPR
    2022, section 3.3), done per crop rather than per image.

    Args:
        size: ``(H, W)`` of the crop, pixels.
        p: probability of a class-placed crop, in [0, 1].
        class_weights: one non-negative sampling weight per class (index = trainId), e.g. median-frequency
            weights; classes beyond its length, and the ignore index, are never drawn.

    Raises:
        ValueError: ``p`` outside [0, 1], a size below 1 or a negative weight.
    """

    def __init__(self, size: tuple[int, int], p: float, class_weights) -> None:
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        self.p = float(p)
        self.class_weights = torch.as_tensor(class_weights, dtype=torch.float64)
        if not 0 <= self.p <= 1 or min(self.size) < 1 or bool((self.class_weights < 0).any()):
            raise ValueError(f"RareClassCrop needs size >= 1, p in [0, 1] and weights >= 0; got {size}, {p}")

    def make_params(self, flat_inputs: list) -> dict:
        mask = next(x for x in flat_inputs if isinstance(x, tv_tensors.Mask))
        h, w = mask.shape[-2:]
        th, tw = self.size
        ph, pw = max(th - h, 0), max(tw - w, 0)
        hh, ww = h + ph, w + pw
        point = self._point(mask) if float(torch.rand(())) < self.p else None
        if point is None:
            top, left = int(torch.randint(hh - th + 1, ())), int(torch.randint(ww - tw + 1, ()))
        else:  # the window's corner uniform among those that keep the pixel inside
            y, x = point
            top = int(torch.randint(max(0, y - th + 1), min(y, hh - th) + 1, ()))
            left = int(torch.randint(max(0, x - tw + 1), min(x, ww - tw) + 1, ()))
        return {"pad": [0, 0, pw, ph], "top": top, "left": left}

    def _point(self, mask: torch.Tensor) -> tuple[int, int] | None:
        if mask.ndim != 2:
            return None
        present = torch.unique(mask)
        present = present[(present >= 0) & (present < len(self.class_weights))]
        weights = self.class_weights[present]
        if present.numel() == 0 or float(weights.sum()) <= 0:
            return None
        c = present[torch.multinomial(weights, 1)]
        ys, xs = torch.nonzero(mask == c, as_tuple=True)
        k = int(torch.randint(len(ys), ()))
        return int(ys[k]), int(xs[k])

    def transform(self, inpt, params: dict):
        if any(params["pad"]):
            inpt = F.pad(inpt, params["pad"], fill=IGNORE if isinstance(inpt, tv_tensors.Mask) else 0)
        return F.crop(inpt, params["top"], params["left"], *self.size)


class Joint:
    """Applies a v2 pipeline to ``(uint8 (3,H,W) image, int64 (H,W) labels)`` and returns plain tensors:
    a float image in [0, 1] and int64 labels."""

    def __init__(self, ops: list) -> None:
        self.pipeline = v2.Compose([*ops, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])

    def __call__(self, image: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img, lab = self.pipeline(tv_tensors.Image(image), tv_tensors.Mask(labels))
        return img.as_subclass(torch.Tensor), lab.as_subclass(torch.Tensor).long()

    def __repr__(self) -> str:
        return f"Joint({self.pipeline})"


def _resize(size: tuple[int, int] | None) -> list:
    # v2.Resize resizes a Mask with nearest-neighbour, so no label value is invented.
    return [] if size is None else [v2.Resize(tuple(size), antialias=True)]


def train_transforms(scale: tuple[float, float] | None = (0.5, 2.0), crop: tuple[int, int] | None = None,
                     flip: bool = True, color_jitter: float = 0.0, resize: tuple[int, int] | None = None,
                     rare_class_crops: float = 0.0, class_weights=None) -> Joint:
    """Training augmentation.

    Args:
        resize: ``(H, W)`` every image and mask is first resized to (a lower-resolution copy of a dataset,
            e.g. to fit a CPU budget); None keeps the files' size.
        scale: random rescaling range (None: keep the size).
        crop: ``(H, W)`` random crop, padded where the image is smaller (None: whole images).
        flip: random horizontal mirroring.
        color_jitter: brightness/contrast/saturation strength (0: off); hue moves by a fifth of it.
        rare_class_crops: probability that a crop is placed on a pixel of a class drawn by ``class_weights``
            (``RareClassCrop``; 0: uniform crops only). Needs ``crop`` and ``class_weights``.

    Raises:
        ValueError: ``rare_class_crops`` > 0 without ``crop`` or ``class_weights``.
    """
    ops: list = _resize(resize)
    if scale is not None and tuple(scale) != (1.0, 1.0):
        ops.append(RandomScale(tuple(scale)))
    if rare_class_crops and (crop is None or class_weights is None):
        raise ValueError("rare_class_crops needs a crop size and per-class sampling weights")
    if rare_class_crops:
        ops.append(RareClassCrop(tuple(crop), rare_class_crops, class_weights))
    elif crop is not None:
        ops.append(v2.RandomCrop(tuple(crop), pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE}))
    if flip:
        ops.append(v2.RandomHorizontalFlip())
    if color_jitter:
        c = float(color_jitter)
        ops.append(v2.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.5, c / 5)))
    return Joint(ops)


def eval_transforms(resize: tuple[int, int] | None = None) -> Joint:
    """No augmentation; ``resize`` as in ``train_transforms`` (scores are then taken at that resolution)."""
    return Joint(_resize(resize))


def pad_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks images of different sizes by padding to the largest (image 0, labels 255) at bottom/right.
    Labels are ``(H, W)`` or, multilabel, ``(K, H, W)``."""
    h = max(img.shape[-2] for img, _ in batch)
    w = max(img.shape[-1] for img, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w)
    labels = torch.full((len(batch), *batch[0][1].shape[:-2], h, w), IGNORE, dtype=torch.int64)
    for k, (img, lab) in enumerate(batch):
        images[k, :, : img.shape[-2], : img.shape[-1]] = img
        labels[k, ..., : lab.shape[-2], : lab.shape[-1]] = lab
    return images, labels


def seeded(transform, seed: int):
    """Runs ``transform`` with torch's and Python's RNG seeded, leaving the caller's RNG state untouched, so a
    sample's augmentation depends only on ``seed`` (reproducible across workers and resumes)."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            return transform()
        finally:
            random.setstate(state)

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
                     flip: bool = True, color_jitter: float = 0.0, resize: tuple[int, int] | None = None) -> Joint:
    """Training augmentation.

    Args:
        resize: ``(H, W)`` every image and mask is first resized to (a lower-resolution copy of a dataset,
            e.g. to fit a CPU budget); None keeps the files' size.
        scale: random rescaling range (None: keep the size).
        crop: ``(H, W)`` random crop, padded where the image is smaller (None: whole images).
        flip: random horizontal mirroring.
        color_jitter: brightness/contrast/saturation strength (0: off); hue moves by a fifth of it.
    """
    ops: list = _resize(resize)
    if scale is not None and tuple(scale) != (1.0, 1.0):
        ops.append(RandomScale(tuple(scale)))
    if crop is not None:
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

"""Multilabel datasets: one mask folder per class, a pixel may have several classes (``task: multilabel``).

Layout under ``root``::

    images/NAME.jpg                  (or images/{split}/NAME.jpg, or a {split}.txt of names)
    masks/CLASS/NAME.png             (or masks/{split}/CLASS/NAME.png): nonzero = the class is present
    dataset.yaml                     optional: classes (their order; default the mask folders, sorted), palette

A class's mask missing for an image means the class is absent from it; an image with no mask in any class
folder is an error naming it (a misnamed file would otherwise read as "nothing there").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .datasets import (
    IGNORE,
    DatasetError,
    Sample,
    SegmentationDataset,
    _folder_layout,
    _read_description,
    _read_raw_mask,
)
from .images import IMAGE_EXTS
from .palettes import default_palette


@dataclass
class MultilabelDataset(SegmentationDataset):
    """Images with one binary mask per class, read as ``(uint8 HxWx3 image, int64 KxHxW labels)`` in {0, 1}.

    ``samples[i].mask`` is the folder holding the class folders; the class masks are
    ``mask / class_names[k] / (samples[i].name + ".png")`` (any image suffix). Transforms get ``(3, H, W)``
    and ``(K, H, W)`` tensors; crops pad the labels with 255 (ignored, per class).
    """

    def mask_files(self, i: int) -> list[Path | None]:
        s = self.samples[i]
        out = []
        for name in self.class_names:
            folder = s.mask / name
            out.append(next((folder / f"{s.name}{e}" for e in (".png", *IMAGE_EXTS)
                             if (folder / f"{s.name}{e}").is_file()), None))
        return out

    def read_mask(self, i: int) -> np.ndarray:
        """``(K, H, W)`` int64 labels: 1 where class k's mask is nonzero, else 0."""
        files = self.mask_files(i)
        if not any(files):
            raise DatasetError(f"{self.samples[i].image}: no mask in any class folder under {self.samples[i].mask} "
                               f"(expected CLASS/{self.samples[i].name}.png)")
        layers, size = [], None
        for f in files:
            if f is None:
                layers.append(None)
                continue
            try:
                raw = _read_raw_mask(f, "index")
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise DatasetError(f"{f}: cannot read mask ({e})") from None
            if size is not None and raw.shape != size:
                raise DatasetError(f"{f}: mask is {raw.shape[1]}x{raw.shape[0]}, the image's other class masks "
                                   f"are {size[1]}x{size[0]}")
            size = raw.shape
            layers.append((raw != 0).astype(np.int64))
        return np.stack([np.zeros(size, np.int64) if m is None else m for m in layers])

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.read_image(i), self.read_mask(i)
        if image.shape[:2] != labels.shape[-2:]:
            h, w = image.shape[:2]
            raise DatasetError(f"{self.samples[i].mask}: masks of {self.samples[i].name} are "
                               f"{labels.shape[2]}x{labels.shape[1]} but the image is {w}x{h}")
        return image, labels

    def _check_one(self, i: int) -> None:
        self.load(i)

    def _gather(self, records: list) -> None:
        return None  # the data summary's statistics count one label per pixel; these masks hold K

    def class_frequencies(self) -> np.ndarray:
        """Pixels where each class is present, over the dataset."""
        counts = np.zeros(self.num_classes, np.int64)
        for i in range(len(self)):
            labels = self.read_mask(i)
            counts += ((labels == 1) & (labels != IGNORE)).reshape(self.num_classes, -1).sum(1)
        return counts


def multilabel(root, split: str | None = None, *, transforms=None) -> MultilabelDataset:
    """A ``MultilabelDataset`` from a folder (layout in the module docstring).

    Raises:
        DatasetError: a missing image, mask or class folder, or an unreadable ``dataset.yaml``.
    """
    root = Path(root)
    desc = _read_description(root, None)
    img_dir, mask_dir, names = _folder_layout(root, split, desc)  # the folder dataset's layouts and splits
    if not mask_dir.is_dir():
        raise DatasetError(f"{mask_dir}: mask folder is missing (one subfolder per class)")
    classes = [str(c) for c in desc.get("classes") or sorted(p.name for p in mask_dir.iterdir() if p.is_dir())]
    if not classes:
        raise DatasetError(f"{mask_dir}: no class folders")
    for c in classes:
        if not (mask_dir / c).is_dir():
            raise DatasetError(f"{mask_dir / c}: class folder is missing")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    names = sorted(images) if names is None else names
    samples = [Sample(images.get(n, img_dir / f"{n}.jpg"), mask_dir, n) for n in names]
    palette = [tuple(int(v) for v in c) for c in desc.get("palette", default_palette(len(classes) + 1)[1:])]
    return MultilabelDataset(samples, classes, palette, name=f"multilabel:{root.name}", transforms=transforms)


__all__ = ["MultilabelDataset", "multilabel"]

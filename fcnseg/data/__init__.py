"""Datasets, joint transforms and palettes."""

from .datasets import DATASETS, IGNORE, DatasetError, SegmentationDataset, build_dataset
from .multilabel import MultilabelDataset, multilabel
from .palettes import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, colorize, overlay, voc_palette

_TRANSFORMS = ("eval_transforms", "pad_collate", "train_transforms")
DATASETS["multilabel"] = multilabel  # registered here: multilabel.py builds on datasets.py

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "DATASETS", "IGNORE", "VOC_CLASSES", "DatasetError",
           "MultilabelDataset", "SegmentationDataset", "build_dataset", "colorize", "overlay", "voc_palette",
           *_TRANSFORMS]


def __getattr__(name: str):
    # The transforms import torchvision (about 160 MB resident); inference does not need them.
    if name in _TRANSFORMS:
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

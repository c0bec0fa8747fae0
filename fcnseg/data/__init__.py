"""Datasets, joint transforms and palettes."""

from .datasets import DATASETS, IGNORE, DatasetError, SegmentationDataset, build_dataset
from .multilabel import MultilabelDataset, multilabel
from .palettes import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, colorize, overlay, voc_palette
from .standard import ade20k, cityscapes

_TRANSFORMS = ("eval_transforms", "pad_collate", "train_transforms")
# Registered here: these modules build on datasets.py, which must not import them back.
DATASETS.update(multilabel=multilabel, cityscapes=cityscapes, ade20k=ade20k)

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "DATASETS", "IGNORE", "VOC_CLASSES", "DatasetError",
           "MultilabelDataset", "SegmentationDataset", "build_dataset", "colorize", "overlay", "voc_palette",
           *_TRANSFORMS]


def __getattr__(name: str):
    # The transforms import torchvision (about 160 MB resident); inference does not need them.
    if name in _TRANSFORMS:
        from . import transforms

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

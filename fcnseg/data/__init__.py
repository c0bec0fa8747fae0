"""Datasets, joint transforms and palettes."""

from .datasets import DATASETS, IGNORE, DatasetError, SegmentationDataset, build_dataset
from .palettes import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, colorize, overlay, voc_palette
from .transforms import eval_transforms, pad_collate, train_transforms

__all__ = ["CAMVID_CLASSES", "CAMVID_PALETTE", "DATASETS", "IGNORE", "VOC_CLASSES", "DatasetError",
           "SegmentationDataset", "build_dataset", "colorize", "eval_transforms", "overlay", "pad_collate",
           "train_transforms", "voc_palette"]

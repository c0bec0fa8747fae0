"""Class names and colour palettes of the datasets fcnseg knows."""

from __future__ import annotations

import numpy as np

VOC_CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]

CAMVID_CLASSES = [
    "sky", "building", "pole", "road", "pavement", "tree", "sign", "fence", "car", "pedestrian", "bicyclist",
]
# SegNet's CamVid colours (the 11-class version), in class order; void (label 11 -> 255) is black.
CAMVID_PALETTE = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]


def voc_palette(n: int = 256) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map: the bits of the label spread over R, G and B (index 255 is (224, 224, 192))."""
    colours = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours.append((r, g, b))
    return colours


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours for any number of classes (the VOC map, which never repeats below 256)."""
    return voc_palette(max(num_classes, 1))[:num_classes]


def colorize(labels: np.ndarray, palette: list[tuple[int, int, int]], ignore_colour=(0, 0, 0)) -> np.ndarray:
    """An ``HxWx3`` uint8 image of a label map; labels outside the palette (255) get ``ignore_colour``."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = ignore_colour
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.asarray(labels).clip(0, 255).astype(np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """The colourised labels blended over an ``HxWx3`` uint8 image."""
    colour = colorize(labels, palette).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def label_image(labels: np.ndarray, palette):
    """A palette PNG image (mode P) of class indices, drawn with ``palette``."""
    from PIL import Image

    im = Image.fromarray(np.asarray(labels).astype(np.uint8), mode="P")
    flat = [int(v) for c in palette for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    return im


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, as torchvision ships them."""
    import torchvision

    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])

"""Decoding image files into ``HxWx3`` uint8 RGB arrays, whatever their mode, with a decompression-bomb guard.

Grey, palette, RGBA, CMYK and YCbCr images go through Pillow's conversions; 16- and 32-bit grey images
are scaled to 8 bits by their type's range instead of being clipped (Pillow's own ``convert`` clips).
The pixel count is checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# 100 Mpixel: above any camera's frame, below Pillow's own bomb error (2 x 89.5 Mpixel), so ours speaks first.
MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file."""


def decode_image(path: str | os.PathLike | BinaryIO, max_pixels: int | None = MAX_PIXELS, exif: bool = True,
                 name: str | None = None, channels: int = 3) -> np.ndarray:
    """Reads ``path`` as an ``HxWx3`` uint8 RGB array (``channels`` 1: ``HxWx1`` grey; 4: ``HxWx4``, a
    4-band file such as an RGB-NIR PNG/TIFF stored as RGBA or CMYK, whose bands are read as they are).

    Args:
        path: the image file, or a binary file object positioned at its start (an upload held in memory).
        max_pixels: refuse images with more pixels than this (checked before decoding); None for no limit.
        exif: turn the image upright per its EXIF orientation (photos); datasets turn it off so that images
            stay aligned with their masks, which carry no orientation.
        name: what messages call the image (default: the path, or "upload" for a file object).
        channels: 3 (RGB), 1 (grey: colour files are converted) or 4 (the file must have 4 bands).

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: anything else (not an image, truncated, too large, unsupported mode); names the file.
    """
    if hasattr(path, "read"):
        source, path = path, Path(name or "upload")
    else:
        path = source = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        path = Path(name) if name else path
    try:
        with warnings.catch_warnings():
            # Pillow warns above 89 Mpixel; the limit is checked here, with a message naming the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(source)
        with im:
            w, h = im.size
            if max_pixels and w * h > max_pixels:
                raise ImageError(f"{path}: {w}x{h} is {w * h / 1e6:.0f} Mpixel, more than the limit of "
                                 f"{max_pixels / 1e6:.0f} Mpixel (a decompression bomb?)")
            im.load()
            if exif:
                im = ImageOps.exif_transpose(im)
            return _to_rgb(im) if channels == 3 else _to_channels(im, channels, path)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, TypeError, EOFError) as e:
        # Pillow reports unknown formats, truncation and bad chunks with assorted exception types.
        empty = source.stat().st_size == 0 if isinstance(source, Path) else source.seek(0, os.SEEK_END) == 0
        if empty:
            raise ImageError(f"{path}: empty file (0 bytes)") from None
        raise ImageError(f"{path}: cannot read image ({e})") from None


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """An already open PIL image as ``HxWx3`` uint8 RGB by ``decode_image``'s rules (16/32-bit grey scaled by
    its type's range, not clipped; alpha dropped). No EXIF rotation: the caller holds the image as it wants it."""
    return _to_rgb(im)


def pil_to_array(im: Image.Image, channels: int = 3) -> np.ndarray:
    """``pil_to_rgb`` for ``channels`` 3; ``HxWx1`` grey or ``HxWx4`` bands otherwise (see ``decode_image``).

    Raises:
        ImageError: an image without the bands asked for, or ``channels`` other than 1, 3 or 4.
    """
    return _to_rgb(im) if channels == 3 else _to_channels(im, channels, "image")


def _to_channels(im: Image.Image, channels: int, path) -> np.ndarray:
    """Grey (``HxWx1``; colour and 16-bit files converted as ``_to_rgb`` does, then to luma) or 4 bands."""
    if channels == 1:
        if im.mode in ("L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            return _to_rgb(im)[:, :, :1]
        return np.array(Image.fromarray(_to_rgb(im)).convert("L"))[:, :, None]
    if channels == 4:
        if len(im.getbands()) != 4:
            raise ImageError(f"{path}: has {len(im.getbands())} bands ({im.mode}), the model reads 4")
        return np.array(im if im.mode in ("RGBA", "CMYK") else im.convert("RGBA"))
    raise ImageError(f"{path}: image files give 1, 3 or 4 channels, not {channels}")


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16"):
            top = 65535.0
        elif im.mode == "F":
            top = 1.0 if a.size and a.max() <= 1.0 else 255.0
        else:  # 32-bit integer: 16-bit PNGs and TIFFs often open this way
            top = 65535.0 if a.size and a.max() > 255 else 255.0
        a = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if im.mode != "RGB":
        # RGBA/LA/PA lose alpha (the colour under it is kept), CMYK and YCbCr are converted, grey repeated.
        im = im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA") else im.convert("RGB")
    return np.array(im)

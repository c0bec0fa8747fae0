"""Decoding image files into ``HxWx3`` uint8 RGB arrays, whatever their mode, with a decompression-bomb guard;
and images of any kind (file, PIL image, array, tensor) as the ``(C, H, W)`` tensors models take.

Grey, palette, RGBA, CMYK and YCbCr images go through Pillow's conversions; 16- and 32-bit grey images
are scaled to 8 bits by their type's range instead of being clipped (Pillow's own ``convert`` clips).
The pixel count is checked from the header, before any pixel is decoded (``check_pixels``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
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
            check_pixels(*im.size, max_pixels, path)
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


def check_pixels(width: int, height: int, max_pixels: int | None, name: str | os.PathLike | None = None) -> None:
    """The decompression-bomb guard: refuses an image of more than ``max_pixels`` pixels (None: no limit), from
    the size in its header, before any pixel is decoded.

    Raises:
        ImageError: ``width * height > max_pixels``; names ``name`` (when given: callers that name the file
            themselves leave it out) and both figures in Mpixel.
    """
    if max_pixels and width * height > max_pixels:
        where = "" if name is None else f"{name}: "
        raise ImageError(f"{where}{width}x{height} is {width * height / 1e6:.0f} Mpixel, more than the limit of "
                         f"{max_pixels / 1e6:.0f} Mpixel (a decompression bomb?)")


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


def to_float(x: torch.Tensor) -> torch.Tensor:
    """An image tensor as float32 in [0, 1]: uint8 (and other integers, read as 0..255) divided by 255, float kept
    as it is (a copy only where the dtype changes). Any shape. The one place fcnseg scales 8-bit pixels."""
    return x.float() if x.is_floating_point() else x.float().div_(255.0)


def to_tensor(image, channels: int = 3, max_pixels: int | None = MAX_PIXELS) -> torch.Tensor:
    """An image as a ``(channels, H, W)`` tensor: uint8 (0..255) from 8- and 16-bit sources (16-bit is scaled by
    its range, not clipped), float32 in [0, 1] from float arrays and tensors; ``to_float`` makes either float.

    Args:
        image: a path (read by ``decode_image``: upright per EXIF, any mode), a PIL image (the same conversions,
            no EXIF turn), an ``HxWxC`` or ``HxW`` array (uint8, uint16, or float in [0, 1]) or a
            ``(channels, H, W)`` tensor (uint8, other integers read as 0..255, or float in [0, 1]).
        channels: 3 (RGB: grey arrays are repeated, a 4th band, alpha, dropped), 1 or 4; other than 3, an array
            must have exactly ``channels`` bands (a 2-D array is one band).
        max_pixels: the ``check_pixels`` limit for files (None: none).

    Raises:
        FileNotFoundError: a path that does not exist.
        ImageError: a file that cannot be read (names it), or too large.
        ValueError: an array or tensor of the wrong shape.
        TypeError: anything else.
    """
    if isinstance(image, (str, os.PathLike)):
        image = decode_image(image, max_pixels=max_pixels, exif=True, channels=channels)
    if isinstance(image, Image.Image):
        image = pil_to_array(image, channels)  # the file rules: 16-bit grey is scaled, not clipped at 255
    if isinstance(image, np.ndarray):
        return _array_to_tensor(image, channels)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != channels:
            raise ValueError(f"expected a ({channels}, H, W) image tensor; got shape {tuple(image.shape)}")
        return image if image.dtype == torch.uint8 or image.is_floating_point() else to_float(image)
    raise TypeError(f"cannot read an image from {type(image).__name__}")


def _array_to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    if image.ndim == 2:
        image = image[:, :, None] if channels == 1 else np.repeat(image[:, :, None], 3, axis=2)
    if channels != 3:
        if image.ndim != 3 or image.shape[2] != channels:
            raise ValueError(f"expected an HxWx{channels} image array; got shape {image.shape}")
    elif image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxWx3 image array; got shape {image.shape}")
    image = image[:, :, :3] if channels == 3 else image
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 65535.0 * 255.0).round().astype(np.uint8)
    if image.dtype != np.uint8:
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)

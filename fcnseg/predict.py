"""Inference on image files of any size: label maps, overlays, class shares and timings.

An FCN takes the whole image at once; ``max_size`` only bounds the work for very large photos (the labels
are computed on a downscaled copy and brought back to full size with nearest-neighbour).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from .checkpoint import atomic_write
from .data.datasets import IMAGE_EXTS
from .data.palettes import label_image, overlay

DEFAULT_MODEL = "camvid-fcn8s-lite0"


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Image files named, or found directly inside named folders; a missing path is an error."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or folder")
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def read_image(path: Path) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array, upright per EXIF; errors name the file."""
    try:
        with Image.open(path) as im:
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file is missing") from None
    except Exception as e:  # PIL raises many types for corrupt files
        raise ValueError(f"{path}: cannot read image ({e})") from None


@torch.inference_mode()
def segment(model, image: np.ndarray, max_size: int | None = None) -> np.ndarray:
    """The ``HxW`` label map of an ``HxWx3`` uint8 image (computed at most ``max_size`` on the long side)."""
    param = next(model.parameters())
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(255).unsqueeze(0)
    h, w = image.shape[:2]
    if max_size and max(h, w) > max_size:
        s = max_size / max(h, w)
        x = torch.nn.functional.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))), mode="bilinear",
                                            antialias=True, align_corners=False)
    labels = model(x.to(param.device, param.dtype)).argmax(1, keepdim=True)
    if labels.shape[-2:] != (h, w):
        labels = torch.nn.functional.interpolate(labels.float(), size=(h, w), mode="nearest").long()
    return labels[0, 0].cpu().numpy()


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes] / labels.size


def _save_atomic(im: Image.Image, path: Path, **kw) -> None:
    # The temporary name has no image suffix, so the format is given from the final name.
    atomic_write(path, lambda tmp: im.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **kw))


def predict_files(model, inputs: list, out: str | os.PathLike, *, max_size: int | None = None,
                  save_overlay: bool = True, alpha: float = 0.5, verbose: bool = True) -> list[dict]:
    """Segments every image in ``inputs`` and writes to ``out``: ``NAME.png`` (palette PNG of class indices),
    ``NAME_overlay.jpg`` (the colours over the photo) and ``summary.json`` (sizes, timings, class shares).

    All images are decoded before anything is written, so a bad file stops the run with nothing half-done.
    """
    files = collect_images(inputs)
    images = [read_image(f) for f in files]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = model.class_names
    segment(model, images[0][:64, :64])  # warm-up, so the first timing is not the allocator's
    results = []
    for f, image in zip(files, images):
        t = time.perf_counter()
        labels = segment(model, image, max_size)
        ms = 1000 * (time.perf_counter() - t)
        _save_atomic(label_image(labels, model.palette), out / f"{f.stem}.png")
        if save_overlay:
            _save_atomic(Image.fromarray(overlay(image, labels, model.palette, alpha)), out / f"{f.stem}_overlay.jpg",
                         quality=90)
        shares = class_shares(labels, model.num_classes)
        results.append({"image": str(f), "size": [image.shape[1], image.shape[0]], "ms": round(ms, 1),
                        "shares": {names[k]: round(float(shares[k]), 4) for k in np.argsort(-shares) if shares[k] > 0}})
        if verbose:
            top = ", ".join(f"{n} {100 * s:.1f}%" for n, s in list(results[-1]["shares"].items())[:5])
            print(f"{f.name}: {image.shape[1]}x{image.shape[0]} in {ms:.0f} ms; {top}", flush=True)
    (out / "summary.json").write_text(json.dumps(results, indent=1))
    return results

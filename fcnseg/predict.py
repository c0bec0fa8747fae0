"""The predict job: image files in, label maps, overlays, class probabilities, class shares and timings out.

Each image is segmented by ``fcnseg.models.inference.predict_image`` (whole, or in overlapping windows when
it has more pixels than ``tile * tile``); consecutive images of one size are batched.

``model`` is anything that maps an ``(N, 3, H, W)`` float tensor in [0, 1] to ``(N, C, H, W)`` scores and
has ``num_classes``, ``class_names`` and ``palette``: an ``FCN`` or an ``export.OnnxModel``.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .backends import AutoModel
from .data.images import IMAGE_EXTS, MAX_PIXELS, ImageError, decode_image, to_float, to_tensor
from .data.palettes import label_image, overlay
from .io.atomic import atomic_write
from .models.inference import OVERLAP, TILE, decide_labels, label_dtype, predict_image, probabilities, window


def load_for_inference(name: str, backend: str | None = None, device: str | torch.device = "auto"):
    """The model ``name`` as ``fcnseg predict``, ``evaluate`` and ``serve`` run it: ``fcnseg.backends.load`` with
    ``backend`` (None: by the file's kind: torch, channels-last on the CPU; onnxruntime for ``.onnx``; openvino
    for ``.xml``).

    Raises:
        ValueError: an unknown backend, one that cannot run this file, or a file that is no model (named).
        FileNotFoundError: no such file, and not a pretrained name.
        fcnseg._optional.MissingExtra: the backend's package is not installed (the pip extra named).
    """
    from .backends import default_backend, load
    from .runtime.device import resolve_device

    device = resolve_device(device) if isinstance(device, str) else device
    return load(name, device, backend=backend or default_backend(name))


def collect_images(inputs: list[str | os.PathLike]) -> list[Path]:
    """Files named, image files directly inside named folders, and matches of glob patterns (``"*.jpg"``,
    ``"photos/**/*.png"``), in order. A name that matches nothing is kept, so that reading it reports it."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        elif not p.exists() and glob.has_magic(str(item)):
            files += [Path(f) for f in sorted(glob.glob(str(item), recursive=True)) if Path(f).is_file()]
        else:
            files.append(p)
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def read_image(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS, channels: int = 3) -> np.ndarray:
    """An ``HxWx3`` uint8 RGB array (``HxWxC`` for other ``channels``), upright per EXIF; see
    ``fcnseg.data.images.decode_image``."""
    return decode_image(path, max_pixels=max_pixels, exif=True, channels=channels)


@dataclass
class Prediction:
    """One image's result from ``predict_iter``: the labels (and probabilities), or the error that stopped it."""

    path: Path
    image: np.ndarray | None = None
    labels: np.ndarray | None = None
    probs: np.ndarray | None = None
    seconds: float = 0.0
    error: str | None = None


def _read_ahead(files: list[Path], max_pixels: int | None, depth: int = 2,
                channels: int = 3) -> Iterator[tuple[Path, object]]:
    # Decode the next images on a thread while the model runs (Pillow releases the GIL while decoding).
    def read(f: Path):
        try:
            return read_image(f, max_pixels, channels)
        except (ImageError, FileNotFoundError, OSError) as e:
            return e

    with ThreadPoolExecutor(1) as pool:
        queue: deque = deque()
        for f in files:
            queue.append((f, pool.submit(read, f)))
            if len(queue) > depth:
                g, fut = queue.popleft()
                yield g, fut.result()
        while queue:
            g, fut = queue.popleft()
            yield g, fut.result()


def predict_iter(model, inputs: list, *, batch_size: int = 1, tile: int | tuple[int, int] | None = TILE,
                 overlap: int = OVERLAP, flip: bool = False, max_size: int | None = None, return_probs: bool = False,
                 max_pixels: int | None = MAX_PIXELS, scales=None) -> Iterator[Prediction]:
    """Yields a ``Prediction`` per image file in ``inputs`` (files, folders, globs), in order.

    Consecutive images of the same size that fit one window go through the model together, ``batch_size``
    at a time. A file that cannot be read yields a ``Prediction`` with ``error`` set, and the rest go on.
    Other arguments are those of ``predict_image``.
    """
    kw = dict(tile=tile, overlap=overlap, flip=flip, batch_size=batch_size, max_size=max_size,
              return_probs=return_probs, scales=scales)
    pending: list[tuple[Path, np.ndarray]] = []
    channels = getattr(model, "in_channels", 3)

    def flush() -> Iterator[Prediction]:
        if not pending:
            return
        t = time.perf_counter()
        batch = torch.stack([to_float(to_tensor(a, channels)) for _, a in pending])
        with torch.inference_mode():
            p = probabilities(model, batch, flip, scales)
        labels = decide_labels(model, p, 1).numpy().astype(label_dtype(model.num_classes))
        dt = (time.perf_counter() - t) / len(pending)
        for k, (f, a) in enumerate(pending):
            yield Prediction(f, a, labels[k], p[k].half().numpy() if return_probs else None, dt)
        pending.clear()

    for f, image in _read_ahead(collect_images(inputs), max_pixels, channels=channels):
        if isinstance(image, Exception):
            yield from flush()
            yield Prediction(f, error=str(image))
            continue
        h, w = image.shape[:2]
        whole = window(h, w, tile) == (h, w) and not (max_size and max(h, w) > max_size)
        if batch_size > 1 and whole:
            if pending and pending[0][1].shape != image.shape:
                yield from flush()
            pending.append((f, image))
            if len(pending) == batch_size:
                yield from flush()
            continue
        yield from flush()
        t = time.perf_counter()
        labels, probs = predict_image(model, image, **kw)
        yield Prediction(f, image, labels, probs, time.perf_counter() - t)
    yield from flush()


def class_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes] / labels.size


def _save_image(im: Image.Image, path: Path, **kw) -> None:
    # The temporary name has no image suffix, so the format is given from the final name.
    atomic_write(path, lambda tmp: im.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **kw))


def _save_probs(probs: np.ndarray, names: list[str], path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probs=probs, class_names=np.array(names))

    atomic_write(path, write)


def _write_outputs(model, r: Prediction, stem: str, out: Path, save_overlay: bool, save_probs: bool,
                   alpha: float) -> tuple[list[str], np.ndarray]:
    """Writes one image's files; returns their names (relative to ``out``) and each class's pixel share.

    Multiclass and binary: ``NAME.png`` (palette PNG of labels) and ``NAME_overlay.jpg``. Multilabel:
    ``masks/CLASS/NAME.png`` per class (grey PNG, 255 where the class is present, else 0: the layout the
    multilabel dataset reads) and no overlay (classes may overlap).
    """
    if getattr(model, "task", "multiclass") == "multilabel":
        written = []
        for k, name in enumerate(model.class_names):
            name = name if name not in ("", ".", "..") and not {"/", "\\"} & set(name) else str(k)
            written.append(f"masks/{name}/{stem}.png")
            (out / "masks" / name).mkdir(parents=True, exist_ok=True)
            _save_image(Image.fromarray((r.labels[k] > 0).astype(np.uint8) * 255), out / written[-1])
        shares = r.labels.reshape(r.labels.shape[0], -1).mean(1)
    else:
        written = [f"{stem}.png"]
        _save_image(label_image(r.labels, model.palette), out / written[0])
        if save_overlay:
            written.append(f"{stem}_overlay.jpg")
            _save_image(Image.fromarray(overlay(r.image, r.labels, model.palette, alpha)), out / written[-1],
                        quality=90)
        shares = class_shares(r.labels, model.num_classes)
    if save_probs:
        written.append(f"{stem}_probs.npz")
        _save_probs(r.probs, model.class_names, out / written[-1])
    return written, shares


def _unique_stems(files: list[Path]) -> dict[Path, str]:
    # Two inputs may share a name (a/x.jpg, b/x.png): later ones get -2, -3, ... so no output is overwritten.
    seen: dict[str, int] = {}
    stems = {}
    for f in files:
        n = seen.get(f.stem, 0) + 1
        seen[f.stem] = n
        stems[f] = f.stem if n == 1 else f"{f.stem}-{n}"
    return stems


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> ``(I, N)``; ``ValueError`` saying what is expected."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of 4 shards") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: I must be in 0..N-1 (here 0..{n - 1})")
    return i, n


def shard_indices(count: int, shard: tuple[int, int] | None) -> list[int]:
    """Positions ``0..count-1`` of the sorted input list that shard ``(I, N)`` takes: every N-th from I (round
    robin, so shards get similar mixes of images); all of them when ``shard`` is None."""
    if shard is None:
        return list(range(count))
    i, n = shard
    return list(range(i, count, n))


def summary_name(shard: tuple[int, int] | None) -> str:
    """``summary.json``, or ``summary-shard-I-of-N.json`` for a shard (merged by ``merge_summaries``)."""
    return "summary.json" if shard is None else f"summary-shard-{shard[0]}-of-{shard[1]}.json"


def _output_names(stem: str, save_overlay: bool, save_probs: bool) -> list[str]:
    return [f"{stem}.png"] + ([f"{stem}_overlay.jpg"] if save_overlay else []) + (
        [f"{stem}_probs.npz"] if save_probs else [])


def _existing_entry(path: Path, out: Path, written: list[str], model) -> dict | None:
    """The summary entry of an image whose outputs all exist (``--skip-existing``), from its label PNG; None when
    one is missing or the label PNG cannot be read (then the image is segmented again)."""
    if not all((out / name).is_file() for name in written):
        return None
    try:
        with Image.open(out / written[0]) as im:
            labels = np.asarray(im)
    except (OSError, ValueError, SyntaxError):
        return None
    if labels.ndim != 2 or labels.max(initial=0) >= model.num_classes:
        return None
    shares = class_shares(labels, model.num_classes)
    names = model.class_names
    h, w = labels.shape
    return {"image": str(path), "size": [w, h], "ms": None, "outputs": written, "skipped": True,
            "shares": {names[k]: round(float(shares[k]), 4) for k in np.argsort(-shares) if shares[k] > 0}}


def predict_files(model, inputs: list, out: str | os.PathLike, *, save_overlay: bool = True,
                  save_probs: bool = False, alpha: float = 0.5, verbose: bool = True, progress: bool | None = None,
                  shard: tuple[int, int] | None = None, skip_existing: bool = False,
                  **kw) -> tuple[list[dict], list[str]]:
    """Segments every image in ``inputs`` and writes to ``out``: ``NAME.png`` (palette PNG of class indices),
    ``NAME_overlay.jpg`` (the colours over the photo), ``NAME_probs.npz`` with ``save_probs`` (float16
    ``probs`` of shape ``(C, H, W)`` and ``class_names``) and ``summary.json`` (sizes, timings, shares, errors).

    Every file is written under a temporary name and renamed, so nothing is ever half-written. A file that
    cannot be read is reported (one line naming it) and skipped; the others go on.

    Args:
        model, inputs: see ``predict_iter``; ``kw`` are its other arguments (tile, flip, batch_size, ...).
        out: the output folder (created).
        save_overlay, save_probs: which files to write besides the label PNG.
        alpha: opacity of the colours in the overlay.
        verbose: print a line per image (when no progress bar is shown) and every error.
        progress: show a tqdm progress bar (default: when stderr is a terminal).
        shard: ``(I, N)``: segment only this shard's images (``shard_indices``), named as a single run names
            them, and write ``summary-shard-I-of-N.json`` instead of ``summary.json`` (see ``merge_summaries``).
        skip_existing: images whose output files all exist are not segmented again; their summary entries are
            read back from the label PNG (``"skipped": true``, ``"ms": null``).

    Returns:
        ``(results, errors)``: a dict per image (as in the summary) and the error messages.
    """
    files = collect_images(inputs)
    stems = _unique_stems(files)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[int, dict] = {}
    todo = []
    for k in shard_indices(len(files), shard):
        done = _existing_entry(files[k], out, _output_names(stems[files[k]], save_overlay, save_probs), model) \
            if skip_existing else None
        if done is None:
            todo.append(k)
        else:
            entries[k] = done
    failed = _segment_files(model, files, todo, stems, out, entries, save_overlay, save_probs, alpha, verbose,
                            progress, kw)
    results = [entries[k] for k in sorted(entries)]
    errors = [failed[k] for k in sorted(failed)]
    body = {"images": results, "errors": errors}
    if shard is not None:
        body = {"shard": list(shard), "inputs": len(files), "indices": sorted(entries), **body,
                "error_indices": sorted(failed)}
    summary = json.dumps(body, indent=1)
    atomic_write(out / summary_name(shard), lambda tmp: Path(tmp).write_text(summary))
    return results, errors


def _segment_files(model, files, todo, stems, out, entries, save_overlay, save_probs, alpha, verbose, progress,
                   kw) -> dict[int, str]:
    """Segments ``files[k]`` for ``k`` in ``todo`` and writes their outputs; fills ``entries[k]``; returns the
    errors by position."""
    from tqdm import tqdm

    names = model.class_names
    failed: dict[int, str] = {}
    bar = tqdm(total=len(todo), unit="img", disable=not (sys.stderr.isatty() if progress is None else progress))
    if todo and not isinstance(model, AutoModel):  # (which warms up each shape as it times it)
        with torch.inference_mode():
            # warm-up, so the first timing is not the allocator's
            probabilities(model, torch.rand(1, getattr(model, "in_channels", 3), 64, 64))
    for k, r in zip(todo, predict_iter(model, [files[k] for k in todo], return_probs=save_probs, **kw)):
        bar.update(1)
        if r.error:
            failed[k] = r.error
            if verbose:
                bar.write(f"fcnseg: error: {r.error}", file=sys.stderr)
            continue
        written, shares = _write_outputs(model, r, stems[files[k]], out, save_overlay, save_probs, alpha)
        h, w = r.labels.shape[-2:]
        entries[k] = {"image": str(r.path), "size": [w, h], "ms": round(1000 * r.seconds, 1), "outputs": written,
                      "shares": {names[j]: round(float(shares[j]), 4) for j in np.argsort(-shares) if shares[j] > 0}}
        if verbose and bar.disable:
            top = ", ".join(f"{n} {100 * s:.1f}%" for n, s in list(entries[k]["shares"].items())[:5])
            print(f"{r.path.name}: {w}x{h} in {1000 * r.seconds:.0f} ms; {top}", flush=True)
    bar.close()
    return failed


def merge_summaries(out: str | os.PathLike) -> dict:
    """Merges the ``summary-shard-I-of-N.json`` files in ``out`` into ``summary.json``, images and errors in the
    order a single run gives them. Returns the merged summary.

    Raises:
        FileNotFoundError: no shard summaries in ``out``, or some of the N are missing (named).
        ValueError: shard files disagree on N or on the number of inputs, or one is unreadable (named).
    """
    out = Path(out)
    found = sorted(out.glob("summary-shard-*-of-*.json"))
    if not found:
        raise FileNotFoundError(f"{out}: no summary-shard-I-of-N.json files to merge")
    shards, images, errors = {}, {}, {}
    for f in found:
        try:
            body = json.loads(f.read_text())
            i, n = body["shard"]
            images.update(zip(body["indices"], body["images"]))
            errors.update(zip(body["error_indices"], body["errors"]))
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{f}: not a readable shard summary ({type(e).__name__}: {e})") from None
        shards[(i, n)] = body["inputs"]
    counts = {n for _, n in shards}
    inputs = set(shards.values())
    if len(counts) != 1 or len(inputs) != 1:
        raise ValueError(f"{out}: shard summaries from different runs (N in {sorted(counts)}, inputs in "
                         f"{sorted(inputs)}); remove the stale ones")
    n = counts.pop()
    missing = [f"summary-shard-{i}-of-{n}.json" for i in range(n) if (i, n) not in shards]
    if missing:
        raise FileNotFoundError(f"{out}: missing {', '.join(missing)} (those shards have not finished)")
    merged = {"images": [images[k] for k in sorted(images)], "errors": [errors[k] for k in sorted(errors)]}
    text = json.dumps(merged, indent=1)
    atomic_write(out / "summary.json", lambda tmp: Path(tmp).write_text(text))
    return merged

"""Helpers shared by the tests (one place): tiny models, tiny datasets, encoded images, clips, free ports and the
command line in a subprocess. Fixtures built on them are in conftest.py."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.train import Callback

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


class StopAt(Callback):
    """A training callback that interrupts the run at step ``at``, as Ctrl-C would."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_step_end(self, state, logs) -> None:
        if state.step == self.at:
            raise KeyboardInterrupt


def heavy_unless(keep: bool, *values, id: str | None = None):
    """``pytest.param(*values)``, marked slow unless ``keep``: the extra cases of a heavy trunk (VGG16's
    134M parameters take seconds per call), which ``make test-slow`` runs and ``make test`` leaves out."""
    return pytest.param(*values, id=id, marks=() if keep else pytest.mark.slow)


def each_once(pairs: list[tuple[str, str]], first: tuple[tuple[str, str], ...] = ()) -> set[tuple[str, str]]:
    """A few of ``pairs`` (arch, backbone) in which every arch and every backbone of ``pairs`` appears: ``first``,
    then pairs of two names not yet seen, then pairs of one. Checks whose cost is a model per pair run these in
    ``make test`` and the whole product in ``make test-slow`` (a head's code is shared by every trunk, and a
    trunk's by every head)."""
    kept: set[tuple[str, str]] = set()
    for wanted in (2, 1):  # names a pair must bring that no kept pair has
        for pair in [*first, *pairs]:
            new = sum(all(pair[i] != k[i] for k in kept) for i in (0, 1))
            if pair in pairs and new >= wanted:
                kept.add(pair)
    return kept


@cache
def cached_model(arch: str, backbone: str, num_classes: int = 5) -> fcnseg.FCN:
    """Models are expensive to build (VGG16: 134M parameters); tests that only read them share one."""
    torch.manual_seed(0)
    return fcnseg.build_model(arch, backbone, num_classes)


def save_shapes_model(path: Path, **info) -> Path:
    """Saves a 3-class FCN-8s for the shapes datasets (``make_shapes``) with random score layers, so that its
    predictions mix all classes across an image; ``info`` is stored with it."""
    from fcnseg.io.modelfile import save_model

    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 3, class_names=["background", "square", "disc"])
    for conv in model.score_layers():
        torch.nn.init.normal_(conv.weight, std=0.5)
    return save_model(model, path, **info)


def make_shapes(root: Path, n: int = 8, size: tuple[int, int] = (48, 64), seed: int = 0, splits: bool = False,
                mask_mode: str = "L") -> Path:
    """A tiny folder dataset: grey noise background (0), a red square (1) and a blue disc (2).

    ``mask_mode``: "L" (grey PNG of labels), "P" (palette PNG) or "RGB" (colour masks + palette in dataset.yaml).
    With ``splits``, the first 3/4 go to images/train, the rest to images/val.
    """
    import yaml

    rng = np.random.default_rng(seed)
    h, w = size
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    desc = {"classes": ["background", "square", "disc"], "palette": palette}
    if mask_mode == "RGB":
        desc["mask_format"] = "rgb"
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    for i in range(n):
        split = ("train" if i < n * 3 // 4 else "val") if splits else ""
        img = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        s = int(rng.integers(h // 4, h // 2))
        y0, x0 = int(rng.integers(0, h - s)), int(rng.integers(0, w // 2 - s // 2))
        lab[y0:y0 + s, x0:x0 + s] = 1
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 2 + 4, w - 6)), h // 6
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
        img[lab == 1] = (rng.normal(0, 6, ((lab == 1).sum(), 3)) + [215, 40, 40]).clip(0, 255).astype(np.uint8)
        img[lab == 2] = (rng.normal(0, 6, ((lab == 2).sum(), 3)) + [40, 60, 215]).clip(0, 255).astype(np.uint8)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / split / f"img{i:03d}.png")
        if mask_mode == "RGB":
            Image.fromarray(np.asarray(palette, np.uint8)[lab]).save(root / "masks" / split / f"img{i:03d}.png")
        elif mask_mode == "P":
            m = Image.fromarray(lab, mode="P")
            m.putpalette([v for c in palette for v in c])
            m.save(root / "masks" / split / f"img{i:03d}.png")
        else:
            Image.fromarray(lab, mode="L").save(root / "masks" / split / f"img{i:03d}.png")
    return root


def png_bytes(image: np.ndarray | Image.Image) -> bytes:
    """``image`` (an array or a PIL image) encoded as PNG."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray, quality: int = 90, **kw) -> bytes:
    """``rgb`` (HxWx3 uint8) encoded as JPEG; ``kw`` goes to Pillow (``exif=...``)."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def photo_jpeg(h: int, w: int, seed: int = 0) -> bytes:
    """A smooth random ``h x w`` JPEG (bilinear blow-up of coarse noise): compresses like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.uint8)
    return jpeg_bytes(np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR)), quality=85)


def make_clip(path: Path, n: int = 12, size: tuple[int, int] = (64, 96), fps=25, codec: str = "libx264",
              noise: float = 0.0, rotation: int | None = None, seed: int = 0) -> Path:
    """A clip of a red square moving over a grey gradient (plus Gaussian noise of ``noise`` grey levels); needs
    PyAV."""
    import av

    rng = np.random.default_rng(seed)
    h, w = size
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.height, s.width, s.pix_fmt = h, w, "yuv420p"
        if rotation is not None:
            s.set_display_rotation(rotation)
        for i in range(n):
            a = np.repeat(np.linspace(40, 200, w)[None, :, None], 3, axis=2).repeat(h, axis=0)
            a[h // 4:h // 2, (2 * i) % w:(2 * i) % w + w // 4] = (220, 30, 30)
            a = np.clip(a + rng.normal(0, noise, a.shape), 0, 255) if noise else a
            c.mux(s.encode(av.VideoFrame.from_ndarray(a.astype(np.uint8), format="rgb24")))
        c.mux(s.encode())
    return path


def free_port() -> int:
    """A TCP port free on loopback now (the OS's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: float = 300,
            python: tuple[str, ...] = ("-m", "fcnseg.cli")) -> subprocess.CompletedProcess:
    """``fcnseg ARGS`` in a subprocess (2 torch threads; ``env`` added to this process's environment); ``python``
    replaces ``-m fcnseg.cli`` (e.g. ``-c CODE``)."""
    return subprocess.run([sys.executable, *python, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}, timeout=timeout)


def start_serve(args: list[str], log: Path, threads: int = 1, limit: float = 90) -> tuple[subprocess.Popen, str]:
    """``fcnseg serve ARGS`` in a subprocess on a free loopback port, its output in ``log``; returns the process
    and its URL once ``/readyz`` answers 200 (the models loaded and warmed up), or fails the test with the log."""
    import httpx
    import pytest

    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fcnseg.cli", "serve", "--port", str(port), *args], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"fcnseg serve did not become ready:\n{log.read_text()}")


def post_upload(url: str, name: str, body: bytes, mime: str = "application/octet-stream", timeout: float = 120,
                **kw):
    """Uploads ``body`` as the file ``name`` to ``URL/predict``; ``kw`` go to httpx (data= for the other fields,
    params, headers). Returns the ``httpx.Response``."""
    import httpx

    return httpx.post(url + "/predict", files={"file": (name, body, mime)}, timeout=timeout, **kw)

"""Saving and loading: model files (safetensors + metadata) and training checkpoints (resumable).

Both are written atomically (a temporary file in the same folder, fsync, rename), so a run killed while
saving leaves the previous file intact. Both are read without unpickling code: safetensors for models,
``torch.load(weights_only=True)`` for checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from .models.fcn import FCN, build_model
from .preprocessing import Preprocessing

FORMAT = "fcnseg-model-1"


def atomic_write(path: Path, write) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, then renames it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(model: FCN, path: str | os.PathLike, **info) -> Path:
    """Writes ``model``'s weights and everything needed to rebuild it to a ``.safetensors`` file.

    Args:
        model: the FCN (a DDP wrapper is unwrapped).
        path: where to write.
        info: extra JSON-serialisable facts stored with it (metrics, dataset, training command, ...).
    """
    from safetensors.torch import save_file

    model = getattr(model, "module", model)
    meta = {"format": FORMAT, "model": model.config(), "info": info}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata={"fcnseg": json.dumps(meta)}))
    return Path(path)


def read_model_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file does not exist")
    try:
        with safe_open(str(path), "pt") as f:
            meta = (f.metadata() or {}).get("fcnseg")
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a safetensors model file ({e})") from None
    if meta is None:
        raise ValueError(f"{path}: a safetensors file without fcnseg metadata (not saved by fcnseg.save_model)")
    meta = json.loads(meta)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown model format {meta.get('format')!r}")
    return meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> FCN:
    """Rebuilds a model saved by ``save_model`` (architecture, classes, palette, preprocessing, weights)."""
    from safetensors.torch import load_file

    meta = read_model_metadata(path)
    cfg = meta["model"]
    model = build_model(cfg["arch"], cfg["backbone"], int(cfg["num_classes"]), padding=cfg.get("padding"),
                        upsampling=cfg.get("upsampling", "paper"), class_names=cfg.get("class_names"))
    model.normalize.set(Preprocessing.from_dict(cfg["preprocessing"]))
    if cfg.get("palette"):
        model.palette = [tuple(c) for c in cfg["palette"]]
    try:
        model.load_state_dict(load_file(str(path)), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match a {cfg['arch']} {cfg['backbone']} ({e})") from None
    model.info = meta.get("info", {})
    return model.to(device).eval()


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Atomically writes a training checkpoint (tensors, numbers, strings, lists and dicts only)."""
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"{path}: not a readable fcnseg checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not an fcnseg training checkpoint (no model/config entries)")
    return state

"""Saving and loading: model files (safetensors + metadata) and training checkpoints (resumable).

Both are written atomically (a temporary file in the same folder, fsync, rename), so a run killed while
saving leaves the previous file intact. Both are read without unpickling code: safetensors for models,
``torch.load(weights_only=True)`` for checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from .models.fcn import FCN, build_model
from .models.weights import strip_wrapper_prefix
from .preprocessing import Preprocessing

FORMAT = "fcnseg-model-1"
TMP_SUFFIX = ".tmp"


class WriteError(OSError):
    """A file could not be written (disk full, permissions, ...); the previous file at that path is unchanged."""


def _temp_name_of(path: Path) -> str:
    return f".{path.name}."


def stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that ``atomic_write`` left in ``folder`` when its process was killed mid-write."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX)
                  and p.is_file())


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Calls ``write(tmp)`` on a temporary file beside ``path``, fsyncs it, renames it over ``path`` and fsyncs
    the folder, so ``path`` holds either the old file or the whole new one, never a part, even after a crash.

    Raises:
        WriteError: writing failed (e.g. ENOSPC); names ``path`` and the cause. The temporary file is removed
            and any previous ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_name_of(path), suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except Exception as e:
            cause = _os_error_in(e)
            if cause is None:
                raise
            err = WriteError(f"{path}: could not write ({cause.strerror or cause}); any previous file there is "
                             "unchanged")
            err.errno = cause.errno
            raise err from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: torch.save re-raises a failed write as a RuntimeError from its zip writer's
    cleanup, with the OSError (e.g. ENOSPC) as its context."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _fsync_dir(folder: Path) -> None:
    # The rename is only durable once the folder's entry is on disk; not every system lets a folder be opened.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_model(model: FCN, path: str | os.PathLike, **info) -> Path:
    """Writes ``model``'s weights and everything needed to rebuild it to a ``.safetensors`` file.

    Args:
        model: the FCN (a DDP wrapper is unwrapped).
        path: where to write.
        info: extra JSON-serialisable facts stored with it (metrics, dataset, training command, ...).
    """
    from safetensors.torch import save

    model = getattr(model, "module", model)
    meta = {"format": FORMAT, "model": model.config(), "info": info}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised in memory and written by Python: safetensors' own file writer reports a full disk as an
    # opaque SafetensorError, Python's as OSError(ENOSPC).
    data = save(tensors, metadata={"fcnseg": json.dumps(meta)})
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
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
    # Files without an alignment entry were written by fcnseg 0.1, whose head was built for nominal geometry.
    model = build_model(cfg["arch"], cfg["backbone"], int(cfg["num_classes"]), padding=cfg.get("padding"),
                        upsampling=cfg.get("upsampling", "paper"), class_names=cfg.get("class_names"),
                        alignment=cfg.get("alignment", "legacy"), task=cfg.get("task", "multiclass"),
                        threshold=float(cfg.get("threshold", 0.5)), in_channels=int(cfg.get("in_channels", 3)))
    pre = Preprocessing.from_dict(cfg["preprocessing"])
    if len(pre.mean) != model.in_channels:
        raise ValueError(f"{path}: preprocessing has {len(pre.mean)} channels, the model reads {model.in_channels}")
    model.normalize.set(pre)
    if cfg.get("palette"):
        model.palette = [tuple(c) for c in cfg["palette"]]
    try:
        model.load_state_dict(strip_wrapper_prefix(load_file(str(path)), path), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match a {cfg['arch']} {cfg['backbone']} ({e})") from None
    model.info = meta.get("info", {})
    return model.to(device).eval()


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Atomically writes a training checkpoint (tensors, numbers, strings, lists and dicts only).

    Raises ``WriteError`` naming ``path`` if it cannot be written; the previous checkpoint is then intact.
    """
    def write(tmp: str) -> None:
        # Through a Python file object: torch.save given a path reports a full disk as an opaque RuntimeError
        # ("unexpected pos ..."), given a file object as OSError(ENOSPC).
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(Path(path), write)


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
    if isinstance(state["model"], dict):
        state["model"] = strip_wrapper_prefix(state["model"], path)
    return state

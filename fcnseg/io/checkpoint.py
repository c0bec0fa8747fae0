"""Training checkpoints (resumable): written atomically, read with ``torch.load(weights_only=True)``, so no code
is unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.weights import strip_wrapper_prefix
from .atomic import atomic_write


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

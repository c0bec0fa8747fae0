"""Training checkpoints (resumable): written atomically, read with ``torch.load(weights_only=True)``, so no code
is unpickled."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..models.spec import ModelSpec
from ..models.weights import strip_wrapper_prefix
from ..preprocessing import Preprocessing
from .atomic import atomic_write


def save_checkpoint(state: dict, path: str | os.PathLike, spec: ModelSpec | None = None) -> None:
    """Atomically writes a training checkpoint (tensors, numbers, strings, lists and dicts only).

    Args:
        state: what to save; a training checkpoint holds ``model`` (the state dict) and ``config``.
        path: where.
        spec: the model's ``ModelSpec``, stored as ``state["spec"]`` (what ``checkpoint_spec`` reads first).

    Raises:
        fcnseg.io.atomic.WriteError: ``path`` could not be written (named); the previous checkpoint is intact.
    """
    if spec is not None:
        state = {**state, "spec": spec.to_dict()}

    def write(tmp: str) -> None:
        # Through a Python file object: torch.save given a path reports a full disk as an opaque RuntimeError
        # ("unexpected pos ..."), given a file object as OSError(ENOSPC).
        with open(tmp, "wb") as f:
            torch.save(state, f)

    atomic_write(Path(path), write)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A training checkpoint, read without unpickling code (``weights_only=True``); a wrapper's key prefix on the
    model's state dict (DDP, ``torch.compile``) is stripped.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a readable fcnseg training checkpoint (named).
    """
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


def checkpoint_spec(state: dict, class_names: list[str]) -> ModelSpec:
    """The ``ModelSpec`` of a training checkpoint (``load_checkpoint``'s dict) for a dataset's classes: its
    ``spec`` entry, or for checkpoints without one its training config (``arch``, ``backbone``, ``padding``,
    ``upsampling``, ``task``, ``threshold``, ``in_channels``) and ``preprocessing``; exact alignment either way
    (checkpoints were never written by fcnseg 0.1's legacy head).

    Raises:
        KeyError: a checkpoint without the entries above.
    """
    if "spec" in state:
        spec = ModelSpec.from_dict(state["spec"], alignment="exact")
    else:
        c = state["config"]
        spec = ModelSpec(c["arch"], c["backbone"], len(class_names), padding=c["padding"],
                         upsampling=c["upsampling"], task=c.get("task", "multiclass"),
                         threshold=c.get("threshold", 0.5), in_channels=c.get("in_channels", 3),
                         preprocessing=Preprocessing.from_dict(state["preprocessing"]))
    return spec.replace(num_classes=len(class_names), class_names=tuple(class_names))

"""Named pretrained FCNs shipped with fcnseg, and ``load`` for names and files alike."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .io.modelfile import load_model

HERE = Path(__file__).resolve().parent / "weights"

# name -> file under fcnseg/weights/ (the model card sits beside it as NAME.md).
PRETRAINED: dict[str, str] = {
    "camvid-fcn8s-lite0": "camvid-fcn8s-lite0.safetensors",
}


def available() -> list[str]:
    return [name for name, f in PRETRAINED.items() if (HERE / f).is_file()]


def model_file(name_or_path: str | os.PathLike) -> Path:
    """The ``.safetensors`` file of a pretrained name, or the path given; errors say what is missing."""
    key = str(name_or_path)
    if key in PRETRAINED:
        path = HERE / PRETRAINED[key]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the weights of {key} are missing from this installation")
        return path
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file, and not a pretrained name "
                                f"(known: {', '.join(PRETRAINED)})")
    return path


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu"):
    """A ready-to-use FCN (eval mode) with its class names, palette and preprocessing.

    Args:
        name_or_path: a name from ``PRETRAINED`` (e.g. "camvid-fcn8s-lite0"), a ``.safetensors`` file
            written by ``fcnseg.io.modelfile.save_model`` (``fcnseg train`` writes ``best.safetensors``), a
            Hub-style folder written by ``fcnseg.save_pretrained``, or ``hf://ORG/NAME[@REVISION]`` (through
            the Hugging Face cache; see ``fcnseg.hub``).
        device: where to put it.
    """
    from . import hub

    if str(name_or_path).startswith(hub.HF_PREFIX):
        return hub.load_hub(str(name_or_path), device)
    if Path(name_or_path).is_dir():
        return hub.load_folder(name_or_path, device)
    return load_model(model_file(name_or_path), device)

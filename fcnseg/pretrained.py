"""Named pretrained FCNs shipped with fcnseg, and ``load`` for names and files alike.

Each entry is a ``PretrainedModel`` (like torchvision's ``Weights`` and timm's ``PretrainedCfg``): its file, model
card, recipe, validation scores and a summary of its ``ModelSpec``. The file itself carries the full spec.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent / "weights"
# What ``fcnseg predict``, ``export``, ``serve`` and the demo use when no model is named.
DEFAULT_MODEL = "camvid-fcn4s-lite0-trainval"


@dataclass(frozen=True)
class PretrainedModel:
    """One shipped model.

    Attributes:
        name: what ``fcnseg.load`` and ``--model`` take.
        file: the ``.safetensors`` file under ``fcnseg/weights/``.
        card: its model card (Markdown) under ``fcnseg/weights/``: data, licence, recipe, scores.
        recipe: the command that trained it.
        metrics: validation scores in [0, 1] as the card states them (``dataset`` names the split evaluated);
            for a final model, those of its selection run.
        spec: a summary of the file's ``ModelSpec``: arch, backbone, num_classes, task, alignment.
        selection: for a final model trained on train+val (as the published CamVid results are), the name of the
            run trained on train alone whose schedule it follows and whose held-out val scores ``metrics`` are;
            "" for a model selected on val itself. Its own val scores are not held-out figures.
    """

    name: str
    file: str
    card: str
    recipe: str
    metrics: Mapping = field(default_factory=dict)
    spec: Mapping = field(default_factory=dict)
    selection: str = ""

    @property
    def path(self) -> Path:
        return HERE / self.file

    @property
    def card_path(self) -> Path:
        return HERE / self.card

    def available(self) -> bool:
        """Whether this installation holds the weights file."""
        return self.path.is_file()


def _camvid(name: str, arch: str, alignment: str, selection: str = "", backbone: str = "efficientnet_lite0",
            **val) -> PretrainedModel:
    """A CamVid (11 classes) FCN shipped as ``weights/NAME.safetensors`` with the card ``weights/NAME.md``,
    trained by ``configs/NAME.yaml``; ``val``: its CamVid val scores in [0, 1] (those of ``selection`` for a
    final model)."""
    return PretrainedModel(
        name, f"{name}.safetensors", f"{name}.md", recipe=f"fcnseg train --config configs/{name}.yaml",
        metrics=MappingProxyType({"dataset": f"camvid:val ({selection})" if selection else "camvid:val", **val}),
        spec=MappingProxyType({"arch": arch, "backbone": backbone, "num_classes": 11,
                               "task": "multiclass", "alignment": alignment}), selection=selection)


_SELECTED = {"pixel_acc": 0.939, "mean_acc": 0.865, "mean_iu": 0.741, "fw_iu": 0.892}  # camvid-fcn4s-lite0's
PRETRAINED: Mapping[str, PretrainedModel] = MappingProxyType({m.name: m for m in (
    # The default: the recipe and schedule chosen on val, trained again on train+val (468 images).
    _camvid("camvid-fcn4s-lite0-trainval", "fcn4s", "exact", selection="camvid-fcn4s-lite0", **_SELECTED),
    # Its selection run, trained on train alone: the val scores are held-out figures.
    _camvid("camvid-fcn4s-lite0", "fcn4s", "exact", **_SELECTED),
    # fcnseg 0.1's model, kept for those who name it: run as a legacy model (inputs padded to a multiple of 32).
    _camvid("camvid-fcn8s-lite0", "fcn8s", "legacy", pixel_acc=0.925, mean_acc=0.844, mean_iu=0.712, fw_iu=0.871),
)})


def held_out(name: str = DEFAULT_MODEL) -> str:
    """The shipped model whose CamVid val scores are held-out figures for ``name``: for a final model trained on
    train+val, its selection run (same network, trained on train alone); otherwise ``name`` itself.

    Raises:
        KeyError: ``name`` is not a shipped model.
    """
    return PRETRAINED[name].selection or name


def available() -> list[str]:
    """Names of the pretrained models whose weights this installation holds."""
    return [name for name, m in PRETRAINED.items() if m.available()]


def model_file(name_or_path: str | os.PathLike) -> Path:
    """The ``.safetensors`` file of a pretrained name, or the path given.

    Raises:
        FileNotFoundError: a name whose weights are missing from this installation, or a path that does not exist
            and is no pretrained name (the known names are listed).
    """
    key = str(name_or_path)
    if key in PRETRAINED:
        path = PRETRAINED[key].path
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
        name_or_path: a name from ``PRETRAINED`` (e.g. ``DEFAULT_MODEL``), a ``.safetensors`` file
            written by ``fcnseg.io.modelfile.save_model`` (``fcnseg train`` writes ``best.safetensors``), a
            Hub-style folder written by ``fcnseg.save_pretrained``, or ``hf://ORG/NAME[@REVISION]`` (through
            the Hugging Face cache; see ``fcnseg.hub``).
        device: where to put it.

    Raises:
        FileNotFoundError: see ``model_file``.
        ValueError: a file that is not an fcnseg model (named).
    """
    from . import hub
    from .io.modelfile import load_model

    if str(name_or_path).startswith(hub.HF_PREFIX):
        return hub.load_hub(str(name_or_path), device)
    if Path(name_or_path).is_dir():
        return hub.load_folder(name_or_path, device)
    return load_model(model_file(name_or_path), device)

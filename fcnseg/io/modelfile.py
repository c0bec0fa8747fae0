"""Model files: an FCN's weights in safetensors with the metadata that rebuilds it (read without unpickling code),
written atomically; and the loader of pytorch-fcn's whole-model files."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from torch import nn

from ..data.palettes import VOC_CLASSES, voc_palette
from ..models.fcn import FCN, build_model
from ..models.spec import ModelSpec
from ..models.weights import read_state_dict, strip_wrapper_prefix
from ..preprocessing import CAFFE_BGR
from .atomic import atomic_write

FORMAT = "fcnseg-model-1"


def save_model(model: FCN, path: str | os.PathLike, **info) -> Path:
    """Writes ``model``'s weights and everything needed to rebuild it to a ``.safetensors`` file.

    Args:
        model: the FCN (a DDP wrapper is unwrapped).
        path: where to write.
        info: extra JSON-serialisable facts stored with it (metrics, dataset, training command, ...).

    Returns:
        ``path``. The file holds the state dict (safetensors) and, as metadata ``fcnseg``, JSON with ``format``,
        ``model`` (``model.spec.to_dict()``) and ``info``.

    Raises:
        fcnseg.io.atomic.WriteError: the file could not be written (named); any previous file there is unchanged.
    """
    from safetensors.torch import save

    model = getattr(model, "module", model)
    meta = {"format": FORMAT, "model": model.spec.to_dict(), "info": info}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised in memory and written by Python: safetensors' own file writer reports a full disk as an
    # opaque SafetensorError, Python's as OSError(ENOSPC).
    data = save(tensors, metadata={"fcnseg": json.dumps(meta)})
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))
    return Path(path)


def read_model_metadata(path: str | os.PathLike) -> dict:
    """The ``fcnseg`` metadata of a model file (``format``, ``model``: the spec dict, ``info``), without reading
    its weights.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a safetensors file, no fcnseg metadata, or an unknown format (named).
    """
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
    """Rebuilds a model saved by ``save_model`` (architecture, classes, palette, preprocessing, weights), in eval
    mode on ``device``; files without an ``alignment`` (fcnseg 0.1) load with the legacy head they were trained with.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an fcnseg model file, a spec that builds no model, or weights that do not fit it (named).
    """
    from safetensors.torch import load_file

    meta = read_model_metadata(path)
    cfg = meta["model"]
    # Files without an alignment entry were written by fcnseg 0.1, whose head was built for nominal geometry.
    spec = ModelSpec.from_dict(cfg, alignment="legacy")
    if spec.preprocessing is None:
        raise ValueError(f"{path}: the model metadata has no preprocessing")
    try:
        model = spec.build()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    try:
        model.load_state_dict(strip_wrapper_prefix(load_file(str(path)), path), strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match a {cfg['arch']} {cfg['backbone']} ({e})") from None
    model.info = meta.get("info", {})
    return model.to(device).eval()


# The authors' Caffe models, as converted by pytorch-fcn (``torchfcn``): FCN32s/16s/8s/8sAtOnce state dicts
# with the layer names of the prototxt. fcnseg uses the same names, with the trunk's layers under ``trunk.``.
TORCHFCN_ARCHS = {"FCN32s": "fcn32s", "FCN16s": "fcn16s", "FCN8s": "fcn8s", "FCN8sAtOnce": "fcn8s-atonce"}


def from_torchfcn(sd: dict) -> dict:
    """A pytorch-fcn (torchfcn) VGG16 FCN state dict under fcnseg's names."""
    return {(f"trunk.{k}" if re.match(r"(conv\d_\d|fc[67])\.", k) else k): v for k, v in sd.items()}


def load_torchfcn(source, arch: str = "fcn8s", class_names: list[str] | None = None):
    """An fcnseg FCN carrying a pytorch-fcn model's weights (e.g. ``fcn8s_from_caffe.pth``, the authors' VOC
    model). The result takes RGB [0, 1] images like every fcnseg model; the Caffe BGR mean subtraction the
    weights expect is its preprocessing. All upsampling layers are learned, as in the authors' models.

    Args:
        source: a state-dict file (read with ``weights_only=True``), a state dict, or a torchfcn module.
        arch: "fcn32s", "fcn16s", "fcn8s" or "fcn8s-atonce"; a module gives its own.
        class_names: names of the classes (default: the 21 PASCAL VOC classes when there are 21).

    Raises:
        FileNotFoundError: a file that does not exist.
        ValueError: not a readable weights file, or not a pytorch-fcn FCN state dict.
    """
    if isinstance(source, nn.Module):
        arch = TORCHFCN_ARCHS.get(type(source).__name__, arch)
        sd = source.state_dict()
    elif isinstance(source, dict):
        sd = strip_wrapper_prefix(source, "state dict")
    else:
        sd = read_state_dict(source)
    sd = from_torchfcn(sd)
    if "score_fr.weight" not in sd:
        raise ValueError("not a pytorch-fcn FCN state dict (no score_fr.weight)")
    n = sd["score_fr.weight"].shape[0]
    if class_names is None and n == len(VOC_CLASSES):
        class_names = list(VOC_CLASSES)
    model = build_model(arch, "vgg16", n, padding="paper", upsampling="learned", class_names=class_names)
    model.normalize.set(CAFFE_BGR)
    if n == len(VOC_CLASSES):
        model.palette = voc_palette(n)
    model.load_state_dict(sd, strict=True)
    return model.eval()

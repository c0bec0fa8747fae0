"""Hub-style model folders: ``config.json`` + ``model.safetensors`` + ``README.md``, local or on the Hugging Face Hub.

A folder written by ``save_pretrained`` is what ``fcnseg.load(FOLDER)`` reads and what ``fcnseg push`` uploads:

- ``config.json``: ``{"format": "fcnseg-hub-1", "library_name": "fcnseg", "model": SPEC, "info": {...}}``;
  ``SPEC`` is ``model.spec.to_dict()``, the ``ModelSpec`` (``fcnseg.models.spec``) that
  ``fcnseg.io.modelfile.load_model`` rebuilds from (arch, backbone, classes, palette, preprocessing, ...).
- ``model.safetensors``: the weights, written by ``fcnseg.io.modelfile.save_model`` (so it also loads on its own).
- ``README.md``: a model card (Hub metadata, classes and colours, preprocessing, metrics, a usage snippet).

``hf://ORG/NAME[@REVISION]`` is fetched with ``huggingface_hub.snapshot_download`` (its cache, ``HF_HOME`` /
``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` apply) and read like a local folder. ``huggingface_hub`` is the optional
extra ``fcnseg[hub]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ._optional import require
from .io.atomic import atomic_write
from .io.modelfile import load_model, read_model_metadata, save_model

HUB_FORMAT = "fcnseg-hub-1"
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "README.md"
HUB_FILES = (CONFIG, WEIGHTS, CARD)
# Keys of the model spec that shape the network: config.json and the weights' own metadata must agree on them.
STRUCTURAL = ("arch", "backbone", "num_classes", "padding", "upsampling", "alignment", "preprocessing")
HF_PREFIX = "hf://"


def save_pretrained(model, folder: str | os.PathLike, **info) -> Path:
    """Writes ``model`` as a Hub-style folder (``config.json``, ``model.safetensors``, ``README.md``).

    Args:
        model: an ``FCN`` (a DDP wrapper is unwrapped).
        folder: created if needed; the three files are replaced atomically, other files are left alone.
        info: JSON-serialisable facts (metrics, dataset, ...) stored in config.json and the card; merged over
            ``model.info`` (what a loaded model carries).

    Returns:
        The folder's path.
    """
    model = getattr(model, "module", model)
    folder = Path(folder)
    info = {**(getattr(model, "info", None) or {}), **info}
    save_model(model, folder / WEIGHTS, **info)
    config = {"format": HUB_FORMAT, "library_name": "fcnseg", "model": model.spec.to_dict(), "info": info}
    text = json.dumps(config, indent=1, default=str) + "\n"
    atomic_write(folder / CONFIG, lambda tmp: Path(tmp).write_text(text))
    card = model_card(config, name=folder.resolve().name)
    atomic_write(folder / CARD, lambda tmp: Path(tmp).write_text(card))
    return folder


def read_config(folder: str | os.PathLike) -> dict:
    """``config.json`` of a Hub-style folder, checked; ``ValueError``/``FileNotFoundError`` naming the file."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a Hub-style model folder holds {', '.join(HUB_FILES[:2])} "
                                "(fcnseg.save_pretrained writes one; a training run's folder has best.safetensors)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != HUB_FORMAT:
        got = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{path}: format {got!r} is not {HUB_FORMAT!r} (not written by fcnseg.save_pretrained)")
    spec = config.get("model")
    if not isinstance(spec, dict) or any(k not in spec for k in ("arch", "backbone", "num_classes")):
        raise ValueError(f"{path}: 'model' must give at least arch, backbone and num_classes")
    return config


def load_folder(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """Loads a folder written by ``save_pretrained`` (eval mode, on ``device``).

    config.json and model.safetensors must agree on the network (``STRUCTURAL`` keys); class names and palette
    come from config.json (they may be edited there), checked against the class count.

    Raises:
        FileNotFoundError: config.json or model.safetensors is missing (named).
        ValueError: a bad config.json, weights that are not an fcnseg model file, or the two disagree (named).
    """
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing; {folder / CONFIG} describes a model but its weights are absent")
    spec, stored = config["model"], read_model_metadata(weights)["model"]
    for key in STRUCTURAL:
        if key in spec and spec[key] != stored.get(key):
            raise ValueError(f"{weights}: weights are for {key}={stored.get(key)!r} but {folder / CONFIG} says "
                             f"{spec[key]!r}")
    model = load_model(weights, device)
    n = model.num_classes
    if spec.get("class_names") is not None:
        if len(spec["class_names"]) != n:
            raise ValueError(f"{folder / CONFIG}: {len(spec['class_names'])} class_names for {n} classes")
        model.class_names = [str(c) for c in spec["class_names"]]
    if spec.get("palette"):
        if len(spec["palette"]) < n:
            raise ValueError(f"{folder / CONFIG}: palette has {len(spec['palette'])} colours for {n} classes")
        model.palette = [tuple(int(v) for v in c) for c in spec["palette"]]
    model.info = {**model.info, **(config.get("info") or {})}
    model.source = str(folder)
    return model


def parse_hf(spec: str) -> tuple[str, str | None]:
    """``"hf://ORG/NAME@REV"`` -> ``("ORG/NAME", "REV")`` (revision None when absent); ``ValueError`` if malformed."""
    rest = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    repo, _, rev = rest.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or (_ and not rev):
        raise ValueError(f"{spec}: expected hf://ORG/NAME or hf://ORG/NAME@REVISION")
    return repo, rev or None


def download(spec: str) -> Path:
    """The local snapshot folder of ``hf://ORG/NAME[@REV]`` (fetched into, or found in, the Hugging Face cache)."""
    repo, rev = parse_hf(spec)
    snapshot_download = require("huggingface_hub", extra="hub", what=f"{spec}: loading from the Hub").snapshot_download
    try:
        return Path(snapshot_download(repo, revision=rev, allow_patterns=list(HUB_FILES)))
    except Exception as e:  # huggingface_hub raises many types (offline, not found, gated, network)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        offline = " (HF_HUB_OFFLINE is set and it is not in the local cache)" if _offline() else ""
        raise FileNotFoundError(f"{spec}: cannot get the model from the Hugging Face Hub{offline}: "
                                f"{type(e).__name__}: {first}") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def load_hub(spec: str, device: str | torch.device = "cpu"):
    """``load_folder`` of ``hf://ORG/NAME[@REV]``'s snapshot; the model's ``source`` is ``spec``."""
    model = load_folder(download(spec), device)
    model.source = spec
    return model


def _hex(c) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c[:3]))


def _metric_lines(info: dict) -> list[str]:
    """Markdown rows for the numbers in ``info["val"]`` (what ``fcnseg train`` stores), or in ``info`` itself."""
    val = info.get("val") if isinstance(info.get("val"), dict) else info
    rows = []
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        v = val.get(key)
        if isinstance(v, (int, float)):
            rows.append(f"| {key} | {100 * v:.1f} |" if v <= 1 else f"| {key} | {v:.1f} |")
    if not rows:
        return ["No metrics were stored with this model."]
    return ["| metric | value |", "|---|---|", *rows]


def model_card(config: dict, name: str = "model") -> str:
    """The ``README.md`` of a Hub folder: Hub metadata, what the model is, its classes, metrics and usage."""
    spec, info = config["model"], config.get("info") or {}
    names = spec.get("class_names") or [str(k) for k in range(int(spec["num_classes"]))]
    palette = spec.get("palette") or []
    pre = spec.get("preprocessing") or {}
    classes = [f"| {k} | {n} | {_hex(palette[k]) if k < len(palette) else ''} |" for k, n in enumerate(names)]
    extra = {k: v for k, v in info.items() if k != "val" and isinstance(v, (str, int, float))}
    lines = [
        "---", "library_name: fcnseg", "pipeline_tag: image-segmentation", "tags:", "- semantic-segmentation",
        "- fcn", f"- {spec['arch']}", f"- {spec['backbone']}", "---", "", f"# {name}", "",
        f"A Fully Convolutional Network ({spec['arch']}, {spec['backbone']} trunk, "
        f"{spec.get('upsampling', 'paper')} upsampling) for {len(names)}-class semantic segmentation, "
        "saved by fcnseg with `fcnseg.save_pretrained`.", "",
        "## Usage", "", "```python", "import fcnseg", "from fcnseg.predict import predict_image", "",
        f'model = fcnseg.load("hf://ORG/{name}")  # or a local copy of this folder',
        'labels, _ = predict_image(model, "photo.jpg")  # HxW uint8 class indices', "```", "",
        "or from the shell: `fcnseg predict --model hf://ORG/" + name + " photo.jpg --out outputs/`", "",
        "## Preprocessing", "",
        "The model takes RGB images as floats in [0, 1] and normalises them itself: "
        f"`{pre.get('name', 'custom')}` (scale {pre.get('scale', 1.0)}, mean {pre.get('mean')}, std {pre.get('std')}"
        f"{', BGR order' if pre.get('bgr') else ''}).", "",
        "## Classes", "", "| label | name | colour |", "|---|---|---|", *classes, "",
        "## Metrics", "", *_metric_lines(info), "",
    ]
    if extra:
        lines += ["## Training facts", "", *[f"- {k}: {v}" for k, v in sorted(extra.items())], ""]
    return "\n".join(lines)


def hub_files(model_spec, staging: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The folder to upload for ``model_spec`` and its exact files.

    ``model_spec`` is a Hub-style folder, checked by loading it and uploaded as it is (its three files only), or a
    loaded FCN (``fcnseg.load`` takes pretrained names and ``.safetensors`` files), first written with
    ``save_pretrained`` into ``staging``.

    Raises:
        ValueError: ``model_spec`` is neither (a file path: load it first).
    """
    if isinstance(model_spec, (str, os.PathLike)):
        src = Path(model_spec)
        if not src.is_dir():
            raise ValueError(f"{src}: not a Hub-style folder; pass fcnseg.load({str(src)!r}) to push a model file")
        load_folder(src)  # a folder that does not load is never pushed
        folder = src
    else:
        folder = save_pretrained(model_spec, staging)
    return folder, [folder / f for f in HUB_FILES if (folder / f).is_file()]


def push(model_spec, repo: str, *, dry_run: bool = False, revision: str | None = None,
         private: bool = False, message: str | None = None, staging: str | os.PathLike) -> list[Path]:
    """Uploads a model (a Hub-style folder or a loaded FCN, see ``hub_files``) to ``repo`` ("ORG/NAME") with
    ``huggingface_hub.upload_folder``.

    Returns the files uploaded (or, with ``dry_run``, that would be: nothing is sent). The token is
    huggingface_hub's own (``HF_TOKEN`` or ``huggingface-cli login``).
    """
    parse_hf(repo)
    folder, files = hub_files(model_spec, staging)
    if dry_run:
        return files
    api = require("huggingface_hub", extra="hub", what="fcnseg push").HfApi()
    api.create_repo(repo, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(folder), allow_patterns=[f.name for f in files],
                      revision=revision, commit_message=message or f"fcnseg push {folder.name}")
    return files

"""The training configuration: ``TrainConfig``, its two presets (``modern``, ``heavy``), reading it from YAML and
``key=value`` overrides, and checking every key's type and value before anything is read."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ..losses import TASKS, parse_loss

# The authors' learning rates for unnormalised (summed) loss with batch 1, by architecture.
HEAVY_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-14}


@dataclass
class TrainConfig:
    """Everything a run needs; a YAML config sets any of these and ``key=value`` overrides them.

    Model: ``arch``, ``backbone``, ``pretrained_backbone`` (weights name or file, None for random),
    ``padding``, ``upsampling``, ``init_from`` (a saved ``.safetensors`` model or checkpoint to start from;
    a coarser architecture is grown with the paper's staged initialisation).
    Data: ``dataset`` ("camvid", "voc", "sbd", "folder"), ``root``, ``train_split``, ``val_split`` (None: no
    validation), ``dataset_options`` (extra builder arguments, e.g. ``sbd_root``), ``skip_bad``.
    Augmentation: ``resize`` ([H, W]: train and validate on copies of the images resized to this, e.g. to fit
    a CPU budget; None keeps the files' size), ``crop`` ([H, W] or None for whole images), ``scale`` ([lo, hi]
    or None), ``flip``, ``color_jitter``, ``rare_class_crops`` (probability in [0, 1] that a crop is placed on
    a pixel of a class drawn by the training split's median-frequency weights, so that rare and thin classes
    fill more crops: ``fcnseg.data.transforms.RareClassCrop``; 0: uniform crops).
    Optimisation: ``epochs``, ``max_steps`` (the run takes ``min(epochs x steps per epoch, max_steps)`` steps and
    the poly schedule decays over exactly those: an iteration schedule is a large ``epochs`` and ``max_steps``),
    ``time_budget_min`` (minutes of wall time from the start of training to the end of the last validation,
    model building and data reading included: the run times its first 10 steps and takes the steps that fit,
    within ``epochs`` and ``max_steps``, planning again after each validation; ``config.yaml`` records the
    plan as ``max_steps`` so that the run repeats from it; see ``fcnseg.train.loop.plan_budget``),
    ``batch_size``, ``optimizer`` ("sgd", "adamw"),
    ``lr`` (None: the heavy mode's per-architecture value), ``momentum``, ``weight_decay``, ``head_lr_mult``
    (score and upsampling layers), ``bias_lr_mult``, ``bias_decay``, ``schedule`` ("poly", "constant"),
    ``poly_power``, ``warmup_steps``, ``ema_decay`` (None: off; else an exponential moving average of the
    weights and BatchNorm statistics, with this decay after a warm-up, is what the run validates and saves:
    see ``fcnseg.train.ema``), ``loss_reduction`` ("mean", "sum"), ``loss_sample`` (fraction of loss
    cells kept), ``loss_sample_stride``, ``class_weights`` (None, "median_frequency", its square root
    "sqrt_median_frequency" (milder), or a list).
    ``freeze_bn``: BatchNorm layers in eval mode with their parameters frozen (needed for batch 1 with a
    BatchNorm trunk; the heavy preset sets it).
    Machine: ``device`` ("auto", "cpu", "cuda", "cuda:1"), ``amp`` ("off", "auto", "bf16", "fp16"; "auto" is
    bf16 on CUDA and, on a CPU with native bf16, whichever of fp32 and bf16 a timed training step shows faster:
    see ``fcnseg.train.loop.choose_amp``), ``channels_last``, ``workers``, ``threads``, ``seed``.
    Output: ``out`` (run folder), ``val_every`` (epochs), ``log_every`` (steps), ``ckpt_every`` (steps; 0 = end
    of each epoch only), ``tensorboard``, ``boundary_width`` (also score IU within this many pixels of label
    edges at validation; 0: off).
    """

    mode: str = "modern"
    arch: str = "fcn8s"
    backbone: str = "efficientnet_lite0"
    pretrained_backbone: str | None = "imagenet"
    padding: str | None = None
    upsampling: str = "paper"
    init_from: str | None = None
    dataset: str = "camvid"
    root: str = "../shared/data/camvid"
    train_split: str = "train"
    val_split: str | None = "val"
    dataset_options: dict = field(default_factory=dict)
    skip_bad: bool = False
    resize: list | None = None
    crop: list | None = field(default_factory=lambda: [288, 384])
    scale: list | None = field(default_factory=lambda: [0.5, 2.0])
    flip: bool = True
    color_jitter: float = 0.0
    rare_class_crops: float = 0.0
    epochs: int = 50
    max_steps: int | None = None
    time_budget_min: float | None = None
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float | None = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    head_lr_mult: float = 1.0
    bias_lr_mult: float = 1.0
    bias_decay: bool = True
    schedule: str = "poly"
    poly_power: float = 0.9
    warmup_steps: int = 0
    ema_decay: float | None = None
    loss_reduction: str = "mean"
    loss_sample: float = 1.0
    loss_sample_stride: int = 32
    class_weights: str | list | None = None
    task: str = "multiclass"
    loss: str | dict | None = None
    threshold: float = 0.5
    in_channels: int = 3
    channel_mean: list | None = None
    channel_std: list | None = None
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = False
    workers: int = 2
    threads: int | None = None
    seed: int = 0
    out: str = "runs/train"
    val_every: int = 1
    log_every: int = 10
    ckpt_every: int = 0
    tensorboard: bool = True
    boundary_width: int = 0
    freeze_bn: bool = False


HEAVY = dict(batch_size=1, crop=None, scale=None, flip=False, color_jitter=0.0, optimizer="sgd", lr=None,
             freeze_bn=True, momentum=0.99, weight_decay=5e-4, head_lr_mult=1.0, bias_lr_mult=2.0, bias_decay=False,
             schedule="constant", warmup_steps=0, loss_reduction="sum", amp="off", upsampling="paper")
MODES = ("modern", "heavy")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults, then the mode's preset, then the YAML file, then ``key=value`` overrides (values in YAML).
    Without a file, a folder dataset (``dataset=folder``) in the modern mode starts from ``folder_preset`` instead
    of the defaults.

    Args:
        path: a YAML mapping of ``TrainConfig`` keys, or None for defaults and overrides only.
        overrides: ``["key=value", ...]`` (each value read as YAML; "-" in a key reads as "_") or a dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not YAML or not a mapping; an override is not key=value; an unknown key (the
            closest valid one is suggested); a value of the wrong type or out of range; an unknown mode or loss.
            Each message names the file (where there is one) and the key.
    """
    import yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config must be a mapping of keys to values")
    if isinstance(overrides, dict):
        values.update(overrides)
    else:
        for item in overrides or []:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not key=value")
            key, text = item.split("=", 1)
            values[key.strip().replace("-", "_")] = yaml.safe_load(text) if text else None
    where = f"{path}: " if path is not None else ""
    _check_keys_and_types(values, where)
    mode = values.get("mode", "modern")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    # The folder preset is a modern recipe: the heavy mode (the paper's) keeps its own.
    preset = folder_preset(values) if path is None and values.get("dataset") == "folder" and mode == "modern" else {}
    merged = {**(HEAVY if mode == "heavy" else {}), **preset, **values}
    if isinstance(merged.get("amp"), bool):  # YAML reads a bare off/on as a boolean
        merged["amp"] = "auto" if merged["amp"] else "off"
    cfg = TrainConfig(**merged)
    if cfg.lr is None:
        cfg.lr = HEAVY_LR[cfg.arch] if cfg.arch in HEAVY_LR else 1e-10
    _validate(cfg)
    return cfg


FOLDER_PRESET = Path(__file__).resolve().parents[1] / "presets" / "folder.yaml"


def folder_preset(values: dict) -> dict:
    """The default recipe of a folder dataset (``presets/folder.yaml``, also ``configs/folder.yaml``), for a run
    given no config file; binary and multilabel tasks take ``bce`` where the preset's loss has ``ce``, and images
    of other than 3 channels no colour jitter (it is defined on RGB)."""
    import yaml

    preset = yaml.safe_load(FOLDER_PRESET.read_text())
    if values.get("task", "multiclass") != "multiclass" and isinstance(preset.get("loss"), dict):
        preset["loss"] = {("bce" if k == "ce" else k): v for k, v in preset["loss"].items()}
    if values.get("in_channels", 3) != 3:
        preset.pop("color_jitter", None)
    return preset


def _allowed_types() -> dict[str, tuple[type, ...]]:
    """Each key's accepted types, from ``TrainConfig``'s resolved type hints: ``str | None`` -> (str, NoneType),
    ``list[int]`` -> (list,); in the order the hint names them (the error messages follow it)."""
    hints = typing.get_type_hints(TrainConfig)
    allowed = {}
    for f in dataclasses.fields(TrainConfig):
        hint = hints[f.name]
        union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        allowed[f.name] = tuple(typing.get_origin(t) or t for t in (typing.get_args(hint) if union else (hint,)))
    return allowed


def _check_keys_and_types(values: dict, where: str = "") -> None:
    """Refuses unknown keys (suggesting the closest valid one) and values of the wrong type, naming the key.

    Integers are accepted for float keys, and so are strings that read as numbers: YAML 1.1 reads ``1e-3``
    (no dot) as a string. Booleans are not integers here, though Python says they are.
    """
    import difflib

    fields = _allowed_types()
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ValueError(f"{where}unknown config key {key!r}{hint}")
    for key, value in values.items():
        allowed = fields[key]
        if float in allowed and isinstance(value, str):
            try:
                values[key] = value = float(value)
            except ValueError:
                pass
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            values[key] = value = float(value)
        if key == "amp" and isinstance(value, bool):  # YAML reads a bare off/on as a boolean; handled later
            continue
        ok = any(isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed)
        if not ok:
            names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise ValueError(f"{where}config key {key!r} must be {names}, got {value!r} "
                             f"({'null' if value is None else type(value).__name__})")


def _validate(cfg: TrainConfig) -> None:
    checks = [
        (cfg.optimizer in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {cfg.optimizer!r}"),
        (cfg.schedule in ("poly", "constant"), f"schedule must be poly or constant, got {cfg.schedule!r}"),
        (cfg.loss_reduction in ("mean", "sum"), f"loss_reduction must be mean or sum, got {cfg.loss_reduction!r}"),
        (0 < cfg.loss_sample <= 1, f"loss_sample must be in (0, 1], got {cfg.loss_sample}"),
        (cfg.amp in ("off", "auto", "bf16", "fp16"), f"amp must be off, auto, bf16 or fp16, got {cfg.amp!r}"),
        (cfg.batch_size >= 1 and cfg.epochs >= 1, "batch_size and epochs must be >= 1"),
        (cfg.max_steps is None or cfg.max_steps >= 1, f"max_steps must be >= 1 or null, got {cfg.max_steps}"),
        (cfg.time_budget_min is None or cfg.time_budget_min > 0,
         f"time_budget_min must be > 0 (minutes) or null, got {cfg.time_budget_min}"),
        (cfg.ema_decay is None or 0 < cfg.ema_decay < 1, f"ema_decay must be in (0, 1) or null, got {cfg.ema_decay}"),
        (cfg.crop is None or len(cfg.crop) == 2, f"crop must be [H, W] or null, got {cfg.crop}"),
        (cfg.resize is None or len(cfg.resize) == 2, f"resize must be [H, W] or null, got {cfg.resize}"),
        (0 <= cfg.rare_class_crops <= 1, f"rare_class_crops must be in [0, 1], got {cfg.rare_class_crops}"),
        (not cfg.rare_class_crops or (cfg.crop is not None and cfg.task != "multilabel"),
         "rare_class_crops needs crop: [H, W] and one label per pixel (not task: multilabel)"),
        (cfg.boundary_width >= 0, f"boundary_width must be >= 0, got {cfg.boundary_width}"),
        (cfg.scale is None or len(cfg.scale) == 2, f"scale must be [lo, hi] or null, got {cfg.scale}"),
        (cfg.lr > 0, f"lr must be > 0, got {cfg.lr}"),
        (cfg.task in TASKS, f"task must be one of {', '.join(TASKS)}, got {cfg.task!r}"),
        (0 < cfg.threshold < 1, f"threshold must be in (0, 1), got {cfg.threshold}"),
        (cfg.in_channels in (1, 3, 4), f"in_channels must be 1, 3 or 4 for image files, got {cfg.in_channels}"),
        (cfg.in_channels == 3 or not cfg.color_jitter, "color_jitter needs 3-channel (RGB) images"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ValueError(msg)
    parse_loss(cfg.loss, cfg.task)  # an unknown loss or option stops the run before anything is read
    if cfg.crop is None and cfg.batch_size > 1:
        warnings.warn("whole images of different sizes in one batch are padded (image 0, labels 255)", stacklevel=3)


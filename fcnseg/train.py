"""Training: whole-image FCN training with a per-pixel multinomial logistic loss (ignore label 255).

Two recipes, chosen with ``mode``:

- ``heavy``: the paper's. Batch 1, whole images, loss summed over pixels (Caffe's ``normalize: false``),
  SGD with momentum 0.99, a fixed tiny learning rate (1e-10 / 1e-12 / 1e-14 for FCN-32s / 16s / 8s),
  weight decay 5e-4, biases at twice the learning rate without decay, final bilinear upsampling frozen.
- ``modern``: batches of random crops padded by the collate (image 0, labels 255), mean loss, poly learning
  rate with linear warm-up, SGD or AdamW, optional mixed precision and class weights.

Both can sample the loss (the paper's patchwise training): each stride-``loss_sample_stride`` cell of the
loss is kept with probability ``loss_sample``. Everything that is random draws from seeds derived from
``(seed, epoch, image)``, so a resumed run, or one with another number of data workers, replays the same
batches. Under ``torchrun`` the same command trains with DDP; only rank 0 writes.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import random
import signal
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import (
    WriteError,
    atomic_write,
    load_checkpoint,
    load_model,
    save_checkpoint,
    save_model,
    stale_temp_files,
)
from .data import MultilabelDataset, build_dataset, eval_transforms, pad_collate, train_transforms
from .data.transforms import seeded
from .evaluate import evaluate, format_table, write_report
from .losses import TASKS, build_loss, parse_loss, segmentation_loss
from .models import build_model, staged_init
from .runtime.cpu import cpu_has_fast_bf16, cpu_name  # noqa: F401 (moved; imported from here before)

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
    or None), ``flip``, ``color_jitter``.
    Optimisation: ``epochs``, ``max_steps`` (the run takes ``min(epochs x steps per epoch, max_steps)`` steps and
    the poly schedule decays over exactly those: an iteration schedule is a large ``epochs`` and ``max_steps``),
    ``batch_size``, ``optimizer`` ("sgd", "adamw"),
    ``lr`` (None: the heavy mode's per-architecture value), ``momentum``, ``weight_decay``, ``head_lr_mult``
    (score and upsampling layers), ``bias_lr_mult``, ``bias_decay``, ``schedule`` ("poly", "constant"),
    ``poly_power``, ``warmup_steps``, ``loss_reduction`` ("mean", "sum"), ``loss_sample`` (fraction of loss
    cells kept), ``loss_sample_stride``, ``class_weights`` (None, "median_frequency", its square root
    "sqrt_median_frequency" (milder), or a list).
    ``freeze_bn``: BatchNorm layers in eval mode with their parameters frozen (needed for batch 1 with a
    BatchNorm trunk; the heavy preset sets it).
    Machine: ``device`` ("auto", "cpu", "cuda", "cuda:1"), ``amp`` ("off", "auto", "bf16", "fp16"),
    ``channels_last``, ``workers``, ``threads``, ``seed``.
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
    epochs: int = 50
    max_steps: int | None = None
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
    """Defaults, then the mode's preset, then the YAML file, then ``key=value`` overrides (values in YAML)."""
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
    merged = {**(HEAVY if mode == "heavy" else {}), **values}
    if isinstance(merged.get("amp"), bool):  # YAML reads a bare off/on as a boolean
        merged["amp"] = "auto" if merged["amp"] else "off"
    cfg = TrainConfig(**merged)
    if cfg.lr is None:
        cfg.lr = HEAVY_LR[cfg.arch] if cfg.arch in HEAVY_LR else 1e-10
    _validate(cfg)
    return cfg


_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict, "None": type(None)}


def _check_keys_and_types(values: dict, where: str = "") -> None:
    """Refuses unknown keys (suggesting the closest valid one) and values of the wrong type, naming the key.

    Integers are accepted for float keys, and so are strings that read as numbers: YAML 1.1 reads ``1e-3``
    (no dot) as a string. Booleans are not integers here, though Python says they are.
    """
    import difflib

    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    for key in values:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(fields))}"
            raise ValueError(f"{where}unknown config key {key!r}{hint}")
    for key, value in values.items():
        allowed = [_TYPES[t.strip()] for t in str(fields[key]).split("|")]
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
        (cfg.crop is None or len(cfg.crop) == 2, f"crop must be [H, W] or null, got {cfg.crop}"),
        (cfg.resize is None or len(cfg.resize) == 2, f"resize must be [H, W] or null, got {cfg.resize}"),
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


# ------------------------------------------------------------------------------------------------------
# Machine: devices, precision, processes


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA where available, else CPU; a bare "cuda" under ``torchrun`` -> this process's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Joins the process group when started by ``torchrun``; returns (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world > 1 and not dist.is_initialized():
        # A bounded wait: if one process dies outside torchrun (which would end the others), the rest fail
        # after this long instead of gloo's 30 minutes. Rank 0 alone writes checkpoints and reports meanwhile.
        timeout = datetime.timedelta(seconds=float(os.environ.get("FCNSEG_DIST_TIMEOUT", "600")))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart != "0":
            # After `torchrun --max-restarts` restarts the workers they share the agent's store with the failed
            # attempt, whose keys (the dead processes' addresses) would be read again: gloo then connects to a
            # closed port and hangs or fails. A prefix per attempt gives each attempt its own keys.
            from torch.distributed.rendezvous import rendezvous

            store, rank, size = next(rendezvous("env://", timeout=timeout))
            store = dist.PrefixStore(f"fcnseg/attempt{restart}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, dev


def finish_distributed() -> None:
    """Waits for every process, then leaves the group: a process that exits while gloo's threads still run
    aborts ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full precision).

    "auto" picks bf16 (or fp16 without bf16) on CUDA and full precision on the CPU, where bf16 is a win only
    for some nets even on CPUs that compute it natively. bf16 asked for on a CPU without native bf16 falls
    back to fp32 with a warning (it would be 40-180x slower); fp16 autocast is CUDA-only.
    """
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp == "bf16":
        if cpu_has_fast_bf16():
            return torch.bfloat16
        warnings.warn("this CPU has no native bf16 (AVX512-BF16/AMX): training in fp32 instead", stacklevel=2)
    elif amp == "fp16":
        warnings.warn("fp16 autocast needs CUDA: training in fp32 instead", stacklevel=2)
    return None


# ------------------------------------------------------------------------------------------------------
# Data


class Augmented(torch.utils.data.Dataset):
    """A dataset whose items are addressed by ``(index, seed)``: the augmentation of each item depends only
    on its seed, whatever worker or process loads it."""

    def __init__(self, dataset, transform) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        image, labels = self.dataset.tensors(index)
        return seeded(lambda: self.transform(image, labels), seed)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world: int = 1,
                  drop_last: bool = True) -> list[list[tuple[int, int]]]:
    """This process's batches of ``(index, seed)`` for one epoch: a shuffle drawn from ``(seed, epoch)``,
    padded to a multiple of ``world`` and dealt out by rank (as ``DistributedSampler`` does)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    order += order[: (-n) % world]
    mine = order[rank::world]
    keys = [(i, (seed * 7919 + epoch) * 1_000_003 + i) for i in mine]
    stop = len(keys) - len(keys) % batch_size if drop_last and len(keys) >= batch_size else len(keys)
    return [keys[k:k + batch_size] for k in range(0, stop, batch_size)]


def median_frequency_weights(counts: np.ndarray) -> torch.Tensor:
    """Eigen & Fergus' median frequency balancing (SegNet's CamVid weights): median(f) / f_c, where f_c is
    class c's pixel share in the images that contain it."""
    freq = counts.astype(np.float64) / np.maximum(counts.sum(), 1)
    med = np.median(freq[freq > 0])
    return torch.tensor(np.where(freq > 0, med / np.maximum(freq, 1e-12), 0.0), dtype=torch.float32)


def load_data(cfg: TrainConfig, main: bool = True):
    """The checked training and validation datasets (validation None without ``val_split``).

    What a folder dataset inferred (its classes and label mapping) is merged into ``cfg.dataset_options``, so
    the validation split reads its masks the same way and the run's ``config.yaml`` repeats it exactly. Each
    dataset's summary is printed (by the main process), bad pairs skipped with ``skip_bad`` are named.

    Raises:
        DatasetError: a bad file (without ``skip_bad``), or a training split that cannot train a model
            (every pixel ignored, or a single class present).
    """
    from .data import DatasetError
    from .data.summary import summary, training_errors

    resize = tuple(cfg.resize) if cfg.resize else None
    train_ds = build_dataset(cfg.dataset, cfg.root, cfg.train_split, **cfg.dataset_options)
    multilabel = isinstance(train_ds, MultilabelDataset)
    if (cfg.task == "multilabel") != multilabel:
        raise ValueError(f"{cfg.root}: task {cfg.task} with dataset {cfg.dataset!r}; multilabel training reads "
                         "one mask folder per class (dataset: multilabel), and only it")
    train_ds.channels = cfg.in_channels
    problems = train_ds.check(skip_bad=cfg.skip_bad)
    if getattr(train_ds, "options", None):
        cfg.dataset_options = {**cfg.dataset_options, **train_ds.options}
    val_ds = None
    if cfg.val_split:
        val_ds = build_dataset(cfg.dataset, cfg.root, cfg.val_split, transforms=eval_transforms(resize),
                               **cfg.dataset_options)
        val_ds.channels = cfg.in_channels
        problems += val_ds.check(skip_bad=cfg.skip_bad)
    if main:
        for p in problems:
            print(f"skipped: {p}", file=sys.stderr)
        for ds in (train_ds, val_ds):
            if ds is not None and not multilabel:  # the summary counts one label per pixel
                print(summary(ds, brief=True), flush=True)
        if getattr(train_ds, "options", None):
            print(f"inferred labels written to {Path(cfg.out) / 'config.yaml'} as dataset_options: "
                  f"{train_ds.options}", flush=True)
    errors = [] if multilabel else training_errors(train_ds)
    if errors:
        raise DatasetError(errors[0])
    return train_ds, val_ds


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def check_batchnorm(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Refuses batch 1 with trainable BatchNorm (statistics of one image; with a 1x1 deepest map, a crash at
    step 1); with ``freeze_bn`` freezes every BatchNorm layer (parameters fixed, running statistics used)."""
    bns = _batchnorms(model)
    if cfg.freeze_bn:
        for m in bns:
            for p in m.parameters():
                p.requires_grad_(False)
        return
    if bns and cfg.batch_size == 1:
        raise ValueError(f"batch_size 1 with the BatchNorm layers of {cfg.backbone} ({len(bns)} layers): each step "
                         "would normalise with one image's statistics (and fail on a 1x1 deepest map); set "
                         "batch_size: 2 or more, or freeze_bn: true")


def train_mode(net: torch.nn.Module, cfg: TrainConfig) -> None:
    """``net.train()``, with BatchNorm layers kept in eval mode under ``freeze_bn``."""
    net.train()
    if cfg.freeze_bn:
        for m in _batchnorms(net):
            m.eval()


# ------------------------------------------------------------------------------------------------------
# Model, loss, optimiser


def build(cfg: TrainConfig, class_names: list[str], palette) -> torch.nn.Module:
    n = len(class_names)
    if cfg.init_from:
        src = Path(cfg.init_from)
        if src.suffix == ".safetensors":
            coarse = load_model(src)
        else:
            state = load_checkpoint(src)
            c = state["config"]
            coarse = build_model(c["arch"], c["backbone"], n, padding=c["padding"], upsampling=c["upsampling"],
                                 class_names=class_names, task=c.get("task", "multiclass"),
                                 threshold=c.get("threshold", 0.5), in_channels=c.get("in_channels", 3))
            coarse.normalize.set(_preprocessing_of(state))
            coarse.load_state_dict(state["model"])
        if coarse.num_classes != n:
            raise ValueError(f"{src}: model scores {coarse.num_classes} classes, the dataset has {n}")
        if coarse.task != cfg.task or coarse.in_channels != cfg.in_channels:
            raise ValueError(f"{src}: a {coarse.task} model of {coarse.in_channels} input channels, the config asks "
                             f"for task {cfg.task} and in_channels {cfg.in_channels}")
        coarse.threshold = cfg.threshold
        model = coarse if coarse.arch == cfg.arch else staged_init(coarse, cfg.arch)
        model.class_names = list(class_names)
    else:
        if cfg.task == "binary" and n != 2:
            raise ValueError(f"{cfg.root}: task binary needs 2 classes (background, foreground) after the "
                             f"dataset's mapping (e.g. remap {{255: 1}} in dataset.yaml); it has {n}: {class_names}")
        model = build_model(cfg.arch, cfg.backbone, n, cfg.pretrained_backbone, padding=cfg.padding,
                            upsampling=cfg.upsampling, class_names=class_names, task=cfg.task,
                            threshold=cfg.threshold, in_channels=cfg.in_channels, channel_mean=cfg.channel_mean,
                            channel_std=cfg.channel_std)
    model.palette = list(palette)[:n]
    return model


def _preprocessing_of(state: dict):
    from .preprocessing import Preprocessing

    return Preprocessing.from_dict(state["preprocessing"])


def param_groups(model, cfg: TrainConfig) -> list[dict]:
    """Trunk weights at ``lr``; score and upsampling layers at ``lr * head_lr_mult``; biases (and norm
    parameters) at ``bias_lr_mult`` times their layer's rate, without weight decay unless ``bias_decay``."""
    head_ids = {id(p) for m in [*model.score_layers(), *model.upsample_layers()] for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            groups.setdefault((id(p) in head_ids, p.dim() <= 1), []).append(p)
    out = []
    for (head, bias), params in sorted(groups.items()):
        lr = cfg.lr * (cfg.head_lr_mult if head else 1.0) * (cfg.bias_lr_mult if bias else 1.0)
        decay = cfg.weight_decay if (not bias or cfg.bias_decay) else 0.0
        out.append({"params": params, "lr": lr, "weight_decay": decay, "name": ("head" if head else "trunk")
                    + ("_bias" if bias else "")})
    return out


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_lambda(cfg: TrainConfig, total_steps: int):
    def f(step: int) -> float:
        warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
        if cfg.schedule == "constant":
            return warm
        return warm * max(0.0, 1 - step / max(total_steps, 1)) ** cfg.poly_power
    return f


# ------------------------------------------------------------------------------------------------------
# The loop


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_pos"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fault_hook(step: int, rank: int) -> None:
    """Fault injection for the tests: with ``FCNSEG_FAULT_AT_STEP=N`` (and ``FCNSEG_FAULT_RANK``, default 0) the
    process SIGKILLs itself right after step N, once: only while the file ``FCNSEG_FAULT_MARKER`` does not exist,
    and it creates it first, so a restarted run goes through."""
    at = os.environ.get("FCNSEG_FAULT_AT_STEP")
    if not at or step != int(at) or rank != int(os.environ.get("FCNSEG_FAULT_RANK", "0")):
        return
    marker = Path(os.environ.get("FCNSEG_FAULT_MARKER", "fcnseg-fault-done"))
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} after step {step}\n")
    print(f"fault injection: rank {rank} kills itself after step {step}", file=sys.stderr, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def train(cfg: TrainConfig, resume: str | None = None) -> dict:
    """Runs training; returns the last validation scores (or an empty dict without validation)."""
    rank, world, device = setup_distributed(cfg.device)
    main = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    resize = tuple(cfg.resize) if cfg.resize else None
    aug = train_transforms(tuple(cfg.scale) if cfg.scale else None, tuple(cfg.crop) if cfg.crop else None,
                           cfg.flip, cfg.color_jitter, resize=resize)
    train_ds, val_ds = load_data(cfg, main)
    model = build(cfg, train_ds.class_names, train_ds.palette).to(device)
    check_batchnorm(model, cfg)
    weight = None
    if cfg.class_weights in ("median_frequency", "sqrt_median_frequency"):
        weight = median_frequency_weights(train_ds.class_frequencies())
        weight = (weight.sqrt() if cfg.class_weights.startswith("sqrt") else weight).to(device)
    elif isinstance(cfg.class_weights, list):
        if len(cfg.class_weights) != train_ds.num_classes:
            raise ValueError(f"class_weights has {len(cfg.class_weights)} values for {train_ds.num_classes} classes")
        weight = torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    elif cfg.class_weights is not None:
        raise ValueError("class_weights must be null, median_frequency, sqrt_median_frequency or a list; "
                         f"got {cfg.class_weights!r}")
    loss_fn = build_loss(cfg.loss, cfg.task, weight=weight, reduction=cfg.loss_reduction)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    optimizer = make_optimizer(param_groups(model, cfg), cfg)
    drop_last = cfg.batch_size > 1
    steps_per_epoch = len(epoch_batches(len(train_ds), cfg.batch_size, 0, cfg.seed, rank, world, drop_last))
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    if main:
        print(startup_line(cfg, train_ds, val_ds, steps_per_epoch, total_steps), flush=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))

    epoch, start_batch, step, best = 0, 0, 0, -1.0
    train_seconds = 0.0  # time spent in training steps, validation excluded (for curves against time)
    if resume:
        ckpt = Path(resume) if resume != "auto" else out / "last.pt"
        if resume == "auto" and not ckpt.exists():
            ckpt = None
            if main:
                print(f"no checkpoint at {out / 'last.pt'}: starting fresh")
        if ckpt is not None:
            state = load_checkpoint(ckpt)
            if state["config"]["arch"] != cfg.arch or state["config"]["backbone"] != cfg.backbone:
                raise ValueError(f"{ckpt}: checkpoint is a {state['config']['arch']} {state['config']['backbone']}, "
                                 f"the config asks for a {cfg.arch} {cfg.backbone}")
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as e:
                raise ValueError(f"{ckpt}: checkpoint does not fit the model ({str(e).splitlines()[0]})") from None
            model.normalize.set(_preprocessing_of(state))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            epoch, start_batch, step, best = state["epoch"], state["batch"], state["step"], state["best"]
            train_seconds = float(state.get("train_seconds", 0.0))
            _set_rng_state(state["rng"])
            if main:
                print(f"resumed from {ckpt}: epoch {epoch}, step {step}")

    net = model
    if world > 1:
        if device.type == "cuda":
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)

    if main:
        for tmp in stale_temp_files(out):  # left by a run killed inside a write; the real files are whole
            tmp.unlink(missing_ok=True)
    logger = _Logger(out, cfg, step) if main else None

    saved_step = step if resume and step else None

    def checkpoint(epoch_: int, batch_: int) -> None:
        nonlocal saved_step
        if not main:
            return
        logger.flush()  # log rows up to this step survive a kill, as the checkpoint does
        try:
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_,
                             "batch": batch_, "step": step, "best": best, "train_seconds": train_seconds,
                             "rng": _rng_state(),
                             "config": asdict(cfg), "preprocessing": model.preprocessing.to_dict()}, out / "last.pt")
        except WriteError as e:
            # A run that cannot checkpoint stops: going on would risk losing everything after the last good one.
            kept = f"the checkpoint of step {saved_step} is kept" if saved_step else "no checkpoint was written"
            raise WriteError(f"{e}; training stopped at step {step} ({kept})") from e
        saved_step = step

    result: dict = {}
    # A private generator: creating a loader must not draw from the global RNG (the loss sampling's), or a
    # run resumed mid-epoch would draw differently from an uninterrupted one. Items carry their own seeds.
    loader_args = dict(num_workers=cfg.workers, collate_fn=pad_collate, pin_memory=device.type == "cuda",
                       generator=torch.Generator().manual_seed(cfg.seed))
    augmented = Augmented(train_ds, aug)
    while epoch < cfg.epochs and step < total_steps:
        batches = epoch_batches(len(train_ds), cfg.batch_size, epoch, cfg.seed, rank, world, drop_last)
        loader = torch.utils.data.DataLoader(augmented, batch_sampler=batches[start_batch:], **loader_args)
        train_mode(net, cfg)
        bar = _progress(main, len(batches), start_batch, f"epoch {epoch + 1}/{cfg.epochs}")
        tick, seen = time.perf_counter(), 0
        step_start = tick  # the data loading of a step counts towards it
        for b, (images, labels) in enumerate(loader, start=start_batch):
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
                scores = net(images)
            loss = segmentation_loss(scores, labels, sample=cfg.loss_sample, stride=cfg.loss_sample_stride,
                                     loss=loss_fn)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step} (epoch {epoch + 1}); "
                                         f"lower lr (now {scheduler.get_last_lr()[0]:.3g}) or check the data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            _fault_hook(step, rank)
            seen += images.shape[0] * world
            if main:
                rate = seen / (time.perf_counter() - tick)
                left = eta(train_seconds + time.perf_counter() - step_start, step, total_steps - step)
                logger.step(step, epoch + 1, loss.item(), scheduler.get_last_lr()[0], rate, left)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4g}", img_s=f"{rate:.1f}", run_eta=left)
            train_seconds += time.perf_counter() - step_start
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and b + 1 < len(batches):
                checkpoint(epoch, b + 1)
            if step >= total_steps:
                break
            step_start = time.perf_counter()
        bar.close()
        epoch, start_batch = epoch + 1, 0
        last = epoch >= cfg.epochs or step >= total_steps
        if val_ds is not None and (epoch % cfg.val_every == 0 or last):
            result = evaluate(net, val_ds, device, amp_dtype=amp_dtype, channels_last=cfg.channels_last,
                              boundary_width=cfg.boundary_width or None)
            if main:
                logger.val(step, epoch, result, train_seconds)
                score = result.get("foreground_iu" if cfg.task == "binary" else "mean_iu")
                score = -1.0 if score is None else score  # None: no labelled pixel in the validation masks
                if score > best or not (out / "best.safetensors").exists():
                    best = max(best, score)
                    save_model(model, out / "best.safetensors", epoch=epoch, step=step, val=_brief(result),
                               dataset=cfg.dataset, split=cfg.val_split, dataset_options=cfg.dataset_options)
        checkpoint(epoch, 0)
    if main:
        info = dict(epoch=epoch, step=step, dataset=cfg.dataset, dataset_options=cfg.dataset_options)
        save_model(model, out / "model.safetensors", val=_brief(result) if result else None, **info)
        if val_ds is None:  # no validation to pick a best model by: the best is the last
            save_model(model, out / "best.safetensors", val=None, best="last (no validation)", **info)
        if result:
            write_report(result, out / "val")
            print(format_table(result))
        logger.close()
        print(f"saved to {out}: model.safetensors (last), best.safetensors "
              f"({'best val mean IU' if val_ds is not None else 'no validation: the last'}), last.pt", flush=True)
    finish_distributed()
    return result


def startup_line(cfg: TrainConfig, train_ds, val_ds, steps_per_epoch: int, total_steps: int) -> str:
    """One line before step 1: the data, the classes, the schedule and where the run is written."""
    val = f", {len(val_ds)} val images ({cfg.val_split})" if val_ds is not None else ", no validation"
    cap = f", capped by max_steps {cfg.max_steps}" if cfg.max_steps and cfg.max_steps < \
        cfg.epochs * steps_per_epoch else ""
    return (f"training {cfg.arch} {cfg.backbone} on {len(train_ds)} images ({cfg.train_split}){val}; "
            f"{train_ds.num_classes} classes; batch {cfg.batch_size}, {steps_per_epoch} steps per epoch, "
            f"{total_steps} steps in all ({cfg.epochs} epochs{cap}); writing to {cfg.out}")


def eta(seconds_done: float, steps_done: int, steps_left: int) -> str:
    """Time left at the rate so far, as "1h02m", "3m05s" or "12s" ("?" before the first step)."""
    if steps_done <= 0:
        return "?"
    left = round(seconds_done / steps_done * steps_left)
    h, m, s = left // 3600, left % 3600 // 60, left % 60
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _brief(result: dict) -> dict:
    return {k: result[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "mean_dice",
                                   "foreground_iu") if k in result}


def _progress(main: bool, total: int, initial: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not main or not sys.stderr.isatty(), leave=False)


class _Logger:
    """CSV logs (``train_log.csv``, ``val_log.csv``), TensorBoard (``tb/``) and a line per ``log_every`` steps
    when there is no terminal for the progress bar."""

    def __init__(self, out: Path, cfg: TrainConfig, step: int) -> None:
        import yaml

        out.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(asdict(cfg), sort_keys=False)
        atomic_write(out / "config.yaml", lambda tmp: Path(tmp).write_text(text))
        self.out, self.cfg, self.t0 = out, cfg, time.perf_counter()
        # On resume, rows written after the checkpoint are dropped: the run replays those steps.
        self.train_csv = self._open("train_log.csv", ["step", "epoch", "loss", "lr", "images_per_s", "seconds"], step)
        self.val_csv = self._open("val_log.csv", ["step", "epoch", "pixel_acc", "mean_acc", "mean_iu", "fw_iu",
                                                  "images_per_s", "train_seconds", "boundary_mean_iu"], step)
        self.tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"), purge_step=step or None)
            except ImportError:
                warnings.warn("tensorboard is not installed: CSV logs only", stacklevel=2)
        self.tty = sys.stderr.isatty()

    def _open(self, name: str, header: list[str], step: int):
        path = self.out / name
        rows = []
        if step and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            # A kill can cut the last row short (the writer's buffer ends mid-row): such a row has fewer fields,
            # and its first field may be a prefix of the real step ("12" of "1234"); drop it.
            rows = [r for r in rows if len(r) == len(header) and r[0].isdigit() and int(r[0]) <= step]

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as t:
                csv.writer(t).writerows([header, *rows])

        # The kept rows replace the file in one rename (a kill here keeps the old log, whose extra rows the next
        # resume drops again); then rows are appended, a step at a time, as the run goes.
        atomic_write(path, write)
        f = open(path, "a", newline="")  # noqa: SIM115 - kept open for the run
        return f, csv.writer(f)

    def step(self, step: int, epoch: int, loss: float, lr: float, rate: float, left: str = "?") -> None:
        f, w = self.train_csv
        w.writerow([step, epoch, f"{loss:.6g}", f"{lr:.6g}", f"{rate:.3f}", f"{time.perf_counter() - self.t0:.1f}"])
        if step % self.cfg.log_every == 0:
            f.flush()
            if self.tb:
                self.tb.add_scalar("train/loss", loss, step)
                self.tb.add_scalar("train/lr", lr, step)
                self.tb.add_scalar("train/images_per_s", rate, step)
            if not self.tty:
                print(f"step {step} epoch {epoch} loss {loss:.4g} lr {lr:.3g} {rate:.1f} img/s, eta {left}",
                      flush=True)

    def val(self, step: int, epoch: int, r: dict, train_seconds: float) -> None:
        f, w = self.val_csv
        boundary = r.get("boundary", {}).get("mean_iu")
        keys = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
        w.writerow([step, epoch] + ["" if r[k] is None else f"{r[k]:.6f}" for k in keys]
                   + [f"{r['images_per_s']:.3f}", f"{train_seconds:.1f}",
                      "" if boundary is None else f"{boundary:.6f}"])
        f.flush()
        if self.tb:
            for k in keys:
                if r[k] is not None:
                    self.tb.add_scalar(f"val/{k}", r[k], step)

        def pct(k: str) -> str:  # None: no labelled pixel in the validation masks
            return "-" if r.get(k) is None else f"{100 * r[k]:.2f}"

        fg = "" if r.get("foreground_iu") is None else f"foreground IU {pct('foreground_iu')} "
        print(f"val epoch {epoch} step {step}: {fg}pixel acc {pct('pixel_acc')} mean acc {pct('mean_acc')} mean IU "
              f"{pct('mean_iu')} fw IU {pct('fw_iu')} ({r['images_per_s']:.1f} img/s)", flush=True)

    def flush(self) -> None:
        for f, _ in (self.train_csv, self.val_csv):
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        for f, _ in (self.train_csv, self.val_csv):
            f.close()
        if self.tb:
            self.tb.close()


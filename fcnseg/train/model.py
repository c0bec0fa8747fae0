"""The model, its BatchNorm handling, parameter groups, optimiser and learning-rate schedule."""

from __future__ import annotations

from pathlib import Path

import torch

from ..io.checkpoint import checkpoint_spec, load_checkpoint
from ..io.modelfile import load_model
from ..models import build_model, staged_init
from .config import TrainConfig


def _batchnorms(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def check_batchnorm(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """Refuses batch 1 with trainable BatchNorm (statistics of one image; with a 1x1 deepest map, a crash at
    step 1); with ``freeze_bn`` freezes every BatchNorm layer (parameters fixed, running statistics used).

    Raises:
        ValueError: ``batch_size`` 1 with BatchNorm layers and without ``freeze_bn``.
    """
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


def build(cfg: TrainConfig, class_names: list[str], palette) -> torch.nn.Module:
    n = len(class_names)
    if cfg.init_from:
        src = Path(cfg.init_from)
        if src.suffix == ".safetensors":
            coarse = load_model(src)
        else:
            state = load_checkpoint(src)
            coarse = checkpoint_spec(state, class_names).build()
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
    """SGD with ``momentum`` or AdamW over ``param_groups``' groups (their own rates and decays)."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


class LRFactor:
    """The learning-rate factor of each step for ``LambdaLR``: linear warm-up over ``warmup_steps``, then constant
    (``schedule="constant"``) or poly decay, ``(1 - step / total_steps) ** poly_power``, to 0 at ``total_steps``.

    An object rather than a closure so that ``LambdaLR.state_dict`` saves its fields (plain numbers, loadable
    with ``weights_only=True``): a time budget sets ``total_steps`` during the run and a resume keeps it."""

    def __init__(self, cfg: TrainConfig, total_steps: int) -> None:
        self.schedule, self.warmup_steps, self.poly_power = cfg.schedule, cfg.warmup_steps, cfg.poly_power
        self.total_steps = total_steps

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.schedule == "constant":
            return warm
        return warm * max(0.0, 1 - step / max(self.total_steps, 1)) ** self.poly_power


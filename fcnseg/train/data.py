"""Training data: the checked datasets, items addressed by ``(index, seed)``, each epoch's batches, class weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..data import MultilabelDataset, build_dataset, eval_transforms, train_transforms
from ..data.transforms import seeded
from .config import TrainConfig


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


def build_data(cfg: TrainConfig, main: bool = True):
    """The checked training and validation datasets (validation None without ``val_split``).

    What a folder dataset inferred (its classes and label mapping) is merged into ``cfg.dataset_options``, so
    the validation split reads its masks the same way and the run's ``config.yaml`` repeats it exactly. Each
    dataset's summary is printed (by the main process), bad pairs skipped with ``skip_bad`` are named.

    Raises:
        DatasetError: a bad file (without ``skip_bad``), or a training split that cannot train a model
            (every pixel ignored, or a single class present).
        ValueError: ``task: multilabel`` without ``dataset: multilabel``, or the other way round.
    """
    from ..data import DatasetError
    from ..data.summary import summary, training_errors

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



def train_augmentation(cfg: TrainConfig, train_ds):
    """The training transform ``cfg`` asks for (``fcnseg.data.train_transforms``); with ``rare_class_crops``,
    crops are placed by the training split's median-frequency weights (``median_frequency_weights``)."""
    weights = median_frequency_weights(train_ds.class_frequencies()) if cfg.rare_class_crops else None
    return train_transforms(tuple(cfg.scale) if cfg.scale else None, tuple(cfg.crop) if cfg.crop else None,
                            cfg.flip, cfg.color_jitter, resize=tuple(cfg.resize) if cfg.resize else None,
                            rare_class_crops=cfg.rare_class_crops, class_weights=weights)


def class_weights(cfg: TrainConfig, train_ds, device: torch.device) -> torch.Tensor | None:
    """The loss's per-class weights (float32, shape ``[num_classes]``, on ``device``) that ``cfg.class_weights``
    asks for: None; "median_frequency" (``median_frequency_weights`` of the training split's pixel counts);
    "sqrt_median_frequency" (their square roots, milder); or a list of one weight per class.

    Raises:
        ValueError: a list of the wrong length, or another value.
    """
    if cfg.class_weights in ("median_frequency", "sqrt_median_frequency"):
        weight = median_frequency_weights(train_ds.class_frequencies())
        return (weight.sqrt() if cfg.class_weights.startswith("sqrt") else weight).to(device)
    if isinstance(cfg.class_weights, list):
        if len(cfg.class_weights) != train_ds.num_classes:
            raise ValueError(f"class_weights has {len(cfg.class_weights)} values for {train_ds.num_classes} classes")
        return torch.tensor(cfg.class_weights, dtype=torch.float32, device=device)
    if cfg.class_weights is not None:
        raise ValueError("class_weights must be null, median_frequency, sqrt_median_frequency or a list; "
                         f"got {cfg.class_weights!r}")
    return None

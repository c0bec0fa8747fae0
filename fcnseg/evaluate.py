"""Evaluation: one confusion matrix over a dataset at full label resolution, the paper's four metrics,
per-class scores, plots and (optionally) the predicted label maps."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ._optional import available, require
from .data.palettes import label_image
from .io.atomic import atomic_write
from .metrics import ConfusionMatrix, MultilabelConfusion, boundary_band, per_image_scores
from .models.inference import OVERLAP, predict_image
from .runtime.amp import AmpChoice, faster_autocast
from .tta import model_scales, tta_record


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.inference_mode()
def evaluate(model, dataset, device: str | torch.device = "cpu", *, amp_dtype: torch.dtype | None = None,
             pred_dir: str | Path | None = None, progress: bool = False,
             channels_last: bool = False, boundary_width: int | None = None,
             per_image: bool = False, scales=None, flip: bool = False, window: tuple[int, int] | None = None,
             overlap: int = OVERLAP) -> dict:
    """Scores ``model`` on ``dataset`` (whole images, one at a time, at the labels' resolution), optionally as
    papers evaluate: test-time augmentation and sliding windows.

    Under ``torch.distributed`` each process takes every ``world``-th image and the confusion matrices are
    summed, so every process returns the same scores.

    Args:
        model: an FCN (or a DDP wrapper of one).
        dataset: a ``SegmentationDataset`` without random transforms.
        device: where to run.
        amp_dtype: autocast dtype (None: full precision).
        pred_dir: if given, each prediction is written there as ``NAME.png`` (palette PNG of class indices).
        progress: show a progress bar.
        channels_last: run in channels-last memory format.
        boundary_width: also score the pixels within this many pixels of a label edge
            (``metrics.boundary_band``) and return their scores under ``boundary``; None: off.
        per_image: also score each image on its own (for the report's gallery of the worst images).
        scales, flip: test-time augmentation: the probabilities of each input scale (e.g. 0.75 1.0 1.25 1.5)
            and of the mirrored image, averaged (``fcnseg.tta``); None: the model's ``test_scale`` (1.0 unless
            chosen on val), False: no flip.
        window: ``(H, W)``: images taller than H or wider than W are segmented in overlapping ``H x W``
            windows (sliding-window evaluation, ``fcnseg.predict``'s tiling), ``overlap`` pixels apart.

    Returns:
        ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fw_iu``, ``per_class_iu``, ``per_class_acc``, ``mean_dice``,
        ``mean_precision``, ``mean_recall`` and their ``per_class_*`` lists (``metrics.f_scores``),
        ``class_names``, ``num_images``, ``images_per_s`` and ``confusion`` (a list of lists); with
        ``boundary_width``, ``boundary``: the same scores (without the matrix) on the edge band, and its width.
        with ``per_image``, also ``per_image``: ``index``, ``name``, ``mean_iu``, ``pixel_acc`` of every image;
        ``tta``: the ``scales``, ``flip``, ``window`` and ``overlap`` used (``fcnseg.tta.tta_record``).

    Raises:
        ValueError: the dataset's and the model's classes differ, a bad scale, or options a multilabel model
            cannot take.
    """
    import time

    net = getattr(model, "module", model)
    task = _check(net, dataset, boundary_width or per_image or pred_dir is not None)
    tta = tta_record(model_scales(net, scales), flip, window, overlap)
    plain = tta["scales"] == [1.0] and not flip and not window
    was_training = net.training
    net.eval()
    rank, world = _rank_world()
    scorer = _Scorer(net, device, task, boundary_width, per_image, pred_dir)
    start, n = time.perf_counter(), 0
    for i in _indices(len(dataset), rank, world, progress):
        image, labels = dataset[i]
        with torch.autocast(torch.device(device).type, amp_dtype, enabled=amp_dtype is not None):
            pred = _predict(net, image, device, channels_last, None if plain else tta)
        scorer.add(dataset.samples[i].name, i, labels.to(device), pred)
        n += 1
    elapsed = time.perf_counter() - start
    net.train(was_training)
    counts = torch.tensor([n, elapsed], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(counts)
    result = scorer.result(world)
    result.update(num_images=int(counts[0]), tta=tta,
                  images_per_s=float(counts[0] / counts[1] * world) if counts[1] > 0 else float("nan"))
    return result


def _check(net, dataset, per_pixel_options: bool) -> str:
    """The model's task, once the dataset is known to fit it (classes; images read with the model's channels)."""
    if dataset.num_classes != net.num_classes:
        raise ValueError(f"{dataset.name} has {dataset.num_classes} classes but the model scores {net.num_classes}")
    task = getattr(net, "task", "multiclass")
    if hasattr(dataset, "channels"):
        dataset.channels = getattr(net, "in_channels", 3)
    if task == "multilabel" and per_pixel_options:
        raise ValueError("multilabel evaluation scores per-class masks: boundary_width, per_image and pred_dir "
                         "are for multiclass and binary models")
    return task


def _indices(n: int, rank: int, world: int, progress: bool):
    """This process's share of the images (every ``world``-th), with a progress bar on rank 0 if asked."""
    indices = range(rank, n, world)
    if progress and rank == 0:
        from tqdm import tqdm

        return tqdm(indices, desc="evaluate", leave=False, disable=None)  # None: no bar without a terminal
    return indices


class _Scorer:
    """The confusion matrices (whole image, edge band), per-image scores and written predictions of a run."""

    def __init__(self, net, device, task: str, boundary_width: int | None, per_image: bool, pred_dir):
        self.net, self.task, self.boundary_width, self.per_image = net, task, boundary_width, per_image
        self.cm = (MultilabelConfusion if task == "multilabel" else ConfusionMatrix)(net.num_classes, device=device)
        self.band_cm = ConfusionMatrix(net.num_classes, device=device) if boundary_width else None
        self.image_scores: list[dict] = []
        self.pred_dir = None if pred_dir is None else Path(pred_dir)
        if self.pred_dir is not None:
            self.pred_dir.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, index: int, labels: torch.Tensor, pred: torch.Tensor) -> None:
        self.cm.update(labels, pred)
        if self.band_cm is not None:
            band = boundary_band(labels, self.boundary_width)
            self.band_cm.update(torch.where(band, labels, self.cm.ignore_index), pred)
        if self.per_image:
            self.image_scores.append({"index": index, "name": name,
                                      **per_image_scores(labels, pred, self.net.num_classes)})
        if self.pred_dir is not None:
            im = label_image(pred.cpu().numpy(), self.net.palette)
            atomic_write(self.pred_dir / f"{name}.png", lambda tmp: im.save(tmp, format="PNG"))

    def result(self, world: int) -> dict:
        """The scores summed over every process (``evaluate``'s result without the counts and timing)."""
        self.cm.all_reduce()
        result = _foreground_first(self.cm.compute()) if self.task == "binary" else self.cm.compute()
        result.update(task=self.task, class_names=list(self.net.class_names), confusion=self.cm.mat.cpu().tolist())
        if self.band_cm is not None:
            self.band_cm.all_reduce()
            result["boundary"] = {"width": int(self.boundary_width), **self.band_cm.compute()}
        if self.per_image:
            result["per_image"] = _gathered(self.image_scores, world)
        return result


def _gathered(image_scores: list[dict], world: int) -> list[dict]:
    """Every process's per-image scores, in dataset order."""
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, image_scores)
        image_scores = [r for part in gathered for r in part]
    return sorted(image_scores, key=lambda r: r["index"])


def timed_amp(model, dataset, device: torch.device, channels_last: bool = False) -> AmpChoice:
    """``--amp auto`` on the CPU: times the model's forward pass on a random input of the dataset's first image's
    size, in fp32 and in bf16 (``fcnseg.runtime.amp.faster_autocast``), and returns the faster. A model that is
    not a torch module (an exported file: its runtime picks its own precision) or an empty dataset: fp32."""
    if not isinstance(model, torch.nn.Module) or len(dataset) == 0:
        return AmpChoice(None, {}, "not a PyTorch model" if len(dataset) else "no images")
    image, _ = dataset[0]
    x = torch.rand((1, *image.shape), generator=torch.Generator().manual_seed(0)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(dtype: torch.dtype | None) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype, enabled=dtype is not None):
            model(x)
    return faster_autocast(step, device)


def _predict(net, image: torch.Tensor, device, channels_last: bool, tta: dict | None) -> torch.Tensor:
    """Labels of one ``(C, H, W)`` image on ``device``: one forward pass, or with ``tta`` (``tta_record``) through
    ``fcnseg.models.inference``'s windows and test-time augmentation. ``(H, W)`` (``(K, H, W)`` multilabel) int64."""
    x = image.unsqueeze(0).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if tta is None:
        if getattr(net, "label_output", False):  # an exported graph's own uint8 argmax
            return net.predict_labels(x)[0].to(device)
        scores = net(x)
        return net.labels(scores)[0] if hasattr(net, "labels") else scores.argmax(1)[0]
    window = tuple(tta["window"]) if tta["window"] else None
    labels, _ = predict_image(net, x[0], tile=window, overlap=tta["overlap"] or 0, flip=tta["flip"],
                              scales=tta["scales"])
    return torch.from_numpy(labels.astype(np.int64)).to(device)


FOREGROUND = ("iu", "dice", "precision", "recall")


def _foreground_first(scores: dict) -> dict:
    """A binary task's scores with the foreground class's figures (class 1) first: ``foreground_iu``,
    ``foreground_dice``, ``foreground_precision``, ``foreground_recall`` (None where undefined)."""
    fg = {}
    for key in FOREGROUND:
        v = scores[f"per_class_{key}"][1]
        fg[f"foreground_{key}"] = None if v is None or (isinstance(v, float) and math.isnan(v)) else v
    return {**fg, **scores}


def format_table(result: dict) -> str:
    """The per-class scores and the four means as a text table."""
    def pct(v: float) -> str:
        return "   -  " if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"

    names = result["class_names"]
    width = max(12, *(len(n) for n in names))
    n = len(names)
    dice = result.get("per_class_dice", [None] * n)
    prec = result.get("per_class_precision", [None] * n)
    lines = []
    if "foreground_iu" in result:
        figures = "  ".join(f"{k} {pct(result[f'foreground_{k}']).strip()}" for k in FOREGROUND)
        lines.append(f"foreground ({names[1]}): {figures}")
    lines.append(f"{'class':{width}s}     IU    acc   Dice   prec")  # acc is the class's recall
    for name, iu, acc, d, pr in zip(names, result["per_class_iu"], result["per_class_acc"], dice, prec):
        lines.append(f"{name:{width}s} {pct(iu)} {pct(acc)} {pct(d)} {pct(pr)}")
    lines.append("-" * (width + 28))
    for key, label in (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iu", "mean IU"),
                       ("fw_iu", "f.w. IU"), ("mean_dice", "mean Dice"), ("mean_precision", "mean prec")):
        if key in result:
            lines.append(f"{label:{width}s} {pct(result[key])}")
    if "boundary" in result:
        b = result["boundary"]
        lines.append(f"{'boundary IU':{width}s} {pct(b['mean_iu'])}  (within {b['width']} px of label edges)")
    lines.append(f"{'images':{width}s} {result['num_images']:6d}")
    return "\n".join(lines)


def write_report(result: dict, out: str | Path) -> None:
    """``metrics.json`` plus ``confusion_matrix.png`` (not for multilabel) and ``per_class_iu.png`` in ``out``;
    ``fcnseg.report.write_html`` adds the self-contained ``report.html`` from them.

    Args:
        result: ``evaluate``'s result (with ``model``, ``dataset``, ``split`` added by the caller, if known).
        out: the folder (created).

    Raises:
        fcnseg.io.atomic.WriteError: a file could not be written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    keys = (*(f"foreground_{k}" for k in FOREGROUND), "pixel_acc", "mean_acc", "mean_iu", "fw_iu", "mean_dice",
            "mean_precision", "mean_recall",
            "per_class_iu", "per_class_acc", "per_class_dice", "per_class_precision", "per_class_recall",
            "class_names", "num_images", "images_per_s", "confusion")
    data = {k: result[k] for k in keys if k in result}
    data.update({k: v for k, v in result.items() if k not in keys})
    # NaN (a class that never occurs) is written as null: JSON has no NaN.
    text = json.dumps(_nan_to_none(data), indent=1)
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    if not available("matplotlib"):  # the report extra; training and evaluating work without it
        warnings.warn("matplotlib is not installed: metrics.json without plots (pip install 'fcnseg[report]')",
                      stacklevel=2)
        return
    if result.get("task") != "multilabel":  # a multilabel result has K two-by-two matrices
        plot_confusion(result, out / "confusion_matrix.png")
    plot_per_class_iu(result, out / "per_class_iu.png")


def _nan_to_none(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, dict):
        return {k: _nan_to_none(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_nan_to_none(x) for x in v]
    return v


def _pyplot():
    """matplotlib's pyplot drawing into files only (the Agg backend: no display needed)."""
    require("matplotlib", extra="report", what="plotting the metrics").use("Agg")
    return require("matplotlib.pyplot", extra="report", what="plotting the metrics")


def _save_figure(fig, path: Path) -> None:
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        _pyplot().close(fig)


def plot_confusion(result: dict, path: Path) -> None:
    plt = _pyplot()
    mat = np.asarray(result["confusion"], dtype=np.float64)
    rows = mat / np.maximum(mat.sum(1, keepdims=True), 1)  # each true class's row sums to 1
    names = result["class_names"]
    n = len(names)
    # At least 5.5 x 4.5 inches, so the title and the tick labels of a few classes are not cut off.
    fig, ax = plt.subplots(figsize=(max(5.5, 2 + 0.45 * n), max(4.5, 1.5 + 0.45 * n)))
    im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for i in range(n):
            for j in range(n):
                if rows[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * rows[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    miu = "-" if result["mean_iu"] is None else f"{100 * result['mean_iu']:.1f}"
    ax.set_title(f"confusion (row-normalised), mean IU {miu}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_per_class_iu(result: dict, path: Path) -> None:
    plt = _pyplot()
    names = result["class_names"]
    iu = [0.0 if v is None or math.isnan(v) else 100 * v for v in result["per_class_iu"]]
    fig, ax = plt.subplots(figsize=(2 + 0.45 * len(names), 4))
    ax.bar(range(len(names)), iu, color="tab:blue")
    if result["mean_iu"] is not None:
        ax.axhline(100 * result["mean_iu"], color="tab:red", lw=1, label=f"mean IU {100 * result['mean_iu']:.1f}")
        ax.legend(loc="upper right")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IU (%)")
    fig.tight_layout()
    _save_figure(fig, path)

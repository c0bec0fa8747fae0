"""Segmentation metrics from one confusion matrix (the paper, section 5): pixel accuracy, mean accuracy,
mean IU and frequency-weighted IU; and Dice (F1), precision and recall per class and their means.

Rows are ground-truth classes, columns predictions. Pixels labelled ``ignore_index`` (255) or any label
outside ``[0, num_classes)`` are not counted. Per-class scores of classes that never occur (neither in the
ground truth nor in the predictions) are NaN and left out of the means, so the means never become NaN; with
no pixel counted at all the means are None (JSON null).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class ConfusionMatrix:
    """Accumulates an int64 ``num_classes x num_classes`` confusion matrix with one ``bincount`` per batch.

    Args:
        num_classes: number of classes, background included.
        ignore_index: label that is never counted (255 in PASCAL VOC and fcnseg's datasets).
        device: where the matrix lives (the predictions' device, to avoid copies).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        """Adds a batch of label maps (any shape, same for both; ``pred`` in ``[0, num_classes)``)."""
        if target.shape != pred.shape:
            raise ValueError(f"target shape {tuple(target.shape)} != prediction shape {tuple(pred.shape)}")
        n = self.num_classes
        target, pred = target.reshape(-1).to(self.mat.device), pred.reshape(-1).to(self.mat.device)
        keep = (target >= 0) & (target < n) & (target != self.ignore_index)
        # Uncounted pixels go to one extra bin rather than being filtered out (a boolean gather is the slow
        # part), and indices use the narrowest integer type that holds n*n: 3-5x faster on the CPU.
        dtype = torch.int16 if n * n < 2**15 else torch.int32 if n * n < 2**31 else torch.int64
        idx = torch.where(keep, target.to(dtype) * n + pred.to(dtype), n * n)
        self.mat += torch.bincount(idx, minlength=n * n + 1)[:n * n].view(n, n)

    def reset(self) -> None:
        self.mat.zero_()

    def all_reduce(self) -> None:
        """Sums the matrices of all processes (no-op outside ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat)

    def compute(self) -> dict:
        """Scores as plain Python numbers: ``pixel_acc``, ``mean_acc``, ``mean_iu``, ``fw_iu`` (None when no
        pixel was counted), ``per_class_iu``, ``per_class_acc`` (NaN for classes that do not occur)."""
        return scores(self.mat)


class MultilabelConfusion:
    """One binary (absent/present) confusion matrix per class, for multilabel tasks.

    ``update`` takes ``(K, H, W)`` or ``(N, K, H, W)`` targets in ``{0, 1, 255}`` and predictions in ``{0, 1}``
    (255 is not counted, per class). ``compute`` scores each class on its own matrix: IU, Dice, precision and
    recall of "present" (None where undefined), their means over the defined ones (None over none),
    ``pixel_acc`` (share of right per-class decisions), ``mean_acc`` (mean recall) and ``fw_iu`` (IU weighted
    by each class's true pixels). ``mat`` is ``(K, 2, 2)`` int64 (rows truth, columns prediction).
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mats = [ConfusionMatrix(2, ignore_index, device) for _ in range(num_classes)]

    @property
    def mat(self) -> torch.Tensor:
        return torch.stack([m.mat for m in self.mats])

    @torch.no_grad()
    def update(self, target: torch.Tensor, pred: torch.Tensor) -> None:
        if target.shape != pred.shape or target.dim() < 3 or target.shape[-3] != self.num_classes:
            raise ValueError(f"multilabel target {tuple(target.shape)} and prediction {tuple(pred.shape)} must "
                             f"both be (K, H, W) or (N, K, H, W) with K = {self.num_classes}")
        for k, m in enumerate(self.mats):
            m.update(target.select(-3, k), pred.select(-3, k))

    def reset(self) -> None:
        for m in self.mats:
            m.reset()

    def all_reduce(self) -> None:
        for m in self.mats:
            m.all_reduce()

    def compute(self) -> dict:
        per = [f_scores(m.mat) for m in self.mats]
        h = self.mat.double().cpu()
        tp, fp, fn = h[:, 1, 1], h[:, 0, 1], h[:, 1, 0]
        iu = [float(t / (t + a + b)) if t + a + b > 0 else None for t, a, b in zip(tp, fp, fn)]
        gt = (tp + fn).tolist()

        def mean(values: list) -> float | None:
            kept = [v for v in values if v is not None]
            return sum(kept) / len(kept) if kept else None

        out = {"per_class_iu": iu, "mean_iu": mean(iu)}
        for key in ("dice", "precision", "recall"):
            out[f"per_class_{key}"] = [p[f"per_class_{key}"][1] for p in per]
            out[f"mean_{key}"] = mean(out[f"per_class_{key}"])
        total = h.sum()
        out["pixel_acc"] = float(h[:, 0, 0].sum() + tp.sum()) / float(total) if total > 0 else None
        out["mean_acc"], out["per_class_acc"] = out["mean_recall"], out["per_class_recall"]
        weighted = [(g, v) for g, v in zip(gt, iu) if v is not None and g > 0]
        out["fw_iu"] = sum(g * v for g, v in weighted) / sum(gt) if sum(gt) > 0 else None
        return out


def boundary_band(labels: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` pixels (Chebyshev distance) of a label edge, as a boolean mask.

    An edge lies between two neighbouring pixels with different labels, the ignore label included, so the
    band also follows the void outlines that VOC draws around objects. Scoring only these pixels (a
    "trimap", Kohli et al. 2009) measures how well a net places boundaries, which is what the paper's skip
    layers are for; whole-image metrics are dominated by object interiors.

    Args:
        labels: ``(H, W)`` or ``(N, H, W)`` integer label maps.
        width: half-width of the band in pixels (>= 1).
    """
    if width < 1:
        raise ValueError(f"boundary width must be >= 1, got {width}")
    x = labels.float()
    if x.dim() == 2:
        x = x[None]
    x = x[:, None]
    k = 2 * width + 1
    # A pixel is in the band if its (2w+1)^2 window holds more than one label: window max != window min.
    hi = torch.nn.functional.max_pool2d(x, k, stride=1, padding=width)
    lo = -torch.nn.functional.max_pool2d(-x, k, stride=1, padding=width)
    return (hi != lo)[:, 0].reshape(labels.shape)


def scores(mat: torch.Tensor) -> dict:
    """The paper's four metrics (and per-class IU and accuracy) from a confusion matrix."""
    h = mat.double().cpu()
    tp = h.diag()
    gt = h.sum(1)  # pixels of each class in the ground truth
    pr = h.sum(0)  # pixels predicted as each class
    total = h.sum()
    union = gt + pr - tp
    nan = torch.tensor(float("nan"), dtype=torch.float64)
    acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
    iu = torch.where(union > 0, tp / union.clamp(min=1), nan)
    freq = gt / total if total > 0 else gt
    if total == 0:  # every pixel ignored: no mean is defined; None (JSON null, "-" in tables), never NaN
        return {"pixel_acc": None, "mean_acc": None, "mean_iu": None, "fw_iu": None,
                "per_class_iu": iu.tolist(), "per_class_acc": acc.tolist(), **f_scores(h)}
    return {
        "pixel_acc": float(tp.sum() / total),
        "mean_acc": float(acc.nanmean()),
        "mean_iu": float(iu.nanmean()),
        "fw_iu": float((freq[union > 0] * iu[union > 0]).sum()),
        "per_class_iu": iu.tolist(),
        "per_class_acc": acc.tolist(),
        **f_scores(h),
    }


def f_scores(mat: torch.Tensor) -> dict:
    """Dice (F1), precision and recall of each class and their means, from a confusion matrix.

    Per class, with ``tp`` its diagonal entry, ``gt`` its row sum and ``pr`` its column sum:
    ``dice = 2 tp / (gt + pr)``, ``precision = tp / pr`` (0 when the class is in the ground truth but never
    predicted), ``recall = tp / gt`` (the paper's per-class accuracy). A class's figure is None where it is
    undefined: Dice and precision for a class neither in the ground truth nor predicted, recall for a class
    not in the ground truth. Means are over the defined figures; a mean over none is None. No NaN anywhere.

    Returns:
        ``per_class_dice``, ``per_class_precision``, ``per_class_recall`` (lists of float or None) and
        ``mean_dice``, ``mean_precision``, ``mean_recall`` (float or None).
    """
    h = mat.double().cpu()
    tp, gt, pr = h.diag(), h.sum(1), h.sum(0)
    dice = [2 * t / (g + p) if g + p > 0 else None for t, g, p in zip(tp.tolist(), gt.tolist(), pr.tolist())]
    precision = [(t / p if p > 0 else 0.0) if g + p > 0 else None
                 for t, g, p in zip(tp.tolist(), gt.tolist(), pr.tolist())]
    recall = [t / g if g > 0 else None for t, g in zip(tp.tolist(), gt.tolist())]

    def mean(values: list) -> float | None:
        kept = [v for v in values if v is not None]
        return sum(kept) / len(kept) if kept else None

    return {"mean_dice": mean(dice), "mean_precision": mean(precision), "mean_recall": mean(recall),
            "per_class_dice": dice, "per_class_precision": precision, "per_class_recall": recall}


def per_image_scores(truth: torch.Tensor, pred: torch.Tensor, num_classes: int) -> dict:
    """Mean IU and pixel accuracy of one image (classes in neither the truth nor the prediction left out;
    pixels labelled 255 or outside the classes not counted). NaN when the image has no counted pixel."""
    cm = ConfusionMatrix(num_classes, device=truth.device)
    cm.update(truth, pred)
    s = scores(cm.mat)
    nan = float("nan")
    return {k: nan if s[k] is None else s[k] for k in ("mean_iu", "pixel_acc")}

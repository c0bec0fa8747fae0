"""Training losses for the three tasks, every one ignoring label 255.

Tasks and what a loss receives (``scores`` are logits, any float dtype; they are computed in float32):

- ``multiclass``: ``scores (N, C, H, W)``, ``target (N, H, W)`` int64 in ``[0, C)`` or 255 (softmax).
- ``binary``: ``scores (N, 1, H, W)``, ``target (N, H, W)`` in ``{0, 1, 255}`` (one sigmoid).
- ``multilabel``: ``scores (N, K, H, W)``, ``target (N, K, H, W)`` in ``{0, 1, 255}`` (K sigmoids).

Losses (``LOSSES``), their options and defaults, and the source each follows:

- ``ce``: cross-entropy (multiclass; ``torch.nn.functional.cross_entropy``). Class weights as torch's: the
  mean is ``sum(w_y * l) / sum(w_y)``.
- ``ohem``: cross-entropy over the hard pixels only (``thresh=0.7``, ``min_kept=100000``): pixels whose
  probability of the true class is below ``max(thresh, p_k)``, ``p_k`` the ``min_kept``-th smallest such
  probability, so at least ``min_kept`` pixels are kept (HRNet-Semantic-Segmentation's ``OhemCrossEntropy``;
  their mean is the plain mean of the class-weighted losses of the kept pixels).
- ``dice``: 1 - soft Dice per class, summed over the batch and pixels (``smooth=0``, ``eps=1e-7``,
  ``log_loss=False``: ``-log(dice)`` instead), averaged over the classes present in the target, weighted by
  the class weights (segmentation_models_pytorch's ``DiceLoss`` with ``classes`` = the present ones).
- ``tversky``: Dice with false positives weighted ``alpha`` and false negatives ``beta`` (``alpha=0.3``,
  ``beta=0.7``, Salehi et al. 2017; ``gamma=1``: the mean is raised to this power; ``smooth``, ``eps``).
- ``focal``: ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017; ``gamma=2``). Multiclass: softmax, class weights
  as ``ce``'s. Binary and multilabel: per-logit sigmoid, ``alpha`` (None: no balancing; else positives
  weighted ``alpha``, negatives ``1 - alpha``, as torchvision's ``sigmoid_focal_loss``).
- ``lovasz``: Lovász-Softmax (multiclass) or Lovász hinge (binary; multilabel: mean over the K channels),
  Berman et al. 2018, over the whole batch, classes present in the target, weighted by the class weights.
- ``bce``: binary cross-entropy with logits (binary and multilabel); class weights weight the K channels,
  ``pos_weight`` (None) weights positives as torch's ``BCEWithLogitsLoss``.

``ce``, ``ohem``, ``focal`` and ``bce`` are per-pixel losses: ``reduction`` "mean" averages over the pixels
not ignored, "sum" sums them. ``dice``, ``tversky`` and ``lovasz`` are set losses (one number per batch) and
do not depend on ``reduction``. A target with every pixel ignored gives a zero that keeps the graph.

A loss spec is a name (``"dice"``), or a mapping of names to factors (``{ce: 1.0, dice: 0.5}``: the weighted
sum), where a factor may also be a mapping of options with an optional ``weight``
(``{focal: {weight: 1.0, gamma: 3}}``).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .tasks import TASKS

IGNORE = 255
# Each loss: the tasks it serves and its options with their defaults.
LOSSES: dict[str, tuple[tuple[str, ...], dict]] = {
    "ce": (("multiclass",), {}),
    "ohem": (("multiclass",), {"thresh": 0.7, "min_kept": 100000}),
    "dice": (TASKS, {"smooth": 0.0, "eps": 1e-7, "log_loss": False}),
    "tversky": (TASKS, {"alpha": 0.3, "beta": 0.7, "gamma": 1.0, "smooth": 0.0, "eps": 1e-7}),
    "focal": (TASKS, {"gamma": 2.0, "alpha": None}),
    "lovasz": (TASKS, {}),
    "bce": (("binary", "multilabel"), {"pos_weight": None}),
}
DEFAULT_LOSS = {"multiclass": "ce", "binary": "bce", "multilabel": "bce"}


def parse_loss(spec, task: str = "multiclass") -> list[tuple[str, float, dict]]:
    """``[(name, factor, options)]`` from a loss spec, every option filled in with its default.

    Args:
        spec: None (the task's default: ``ce`` for multiclass, ``bce`` otherwise), a name, or a mapping of
            names to a factor or to a mapping of options (with an optional ``weight``, the factor; default 1).
        task: "multiclass", "binary" or "multilabel".

    Raises:
        ValueError: an unknown task, loss (with the closest valid name) or option, a loss that does not
            serve the task, a factor that is not a number >= 0, or an empty spec.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    spec = DEFAULT_LOSS[task] if spec is None else spec
    items = {spec: 1.0} if isinstance(spec, str) else spec
    if not isinstance(items, dict) or not items:
        raise ValueError(f"loss must be a name or a mapping of names to weights, got {spec!r}")
    out = []
    for name, value in items.items():
        if name not in LOSSES:
            close = difflib.get_close_matches(str(name), LOSSES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(LOSSES)}"
            raise ValueError(f"unknown loss {name!r}{hint}")
        tasks, defaults = LOSSES[name]
        if task not in tasks:
            alt = "bce" if name in ("ce", "ohem") else "ce"
            raise ValueError(f"loss {name!r} is for {'/'.join(tasks)} tasks, not {task} (use {alt!r})")
        options = dict(value) if isinstance(value, dict) else {"weight": value}
        factor = options.pop("weight", 1.0)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
            raise ValueError(f"loss {name!r}: weight must be a number >= 0, got {factor!r}")
        for key in options:
            if key not in defaults:
                valid = ", ".join(["weight", *defaults])
                raise ValueError(f"loss {name!r} has no option {key!r}; valid: {valid}")
        out.append((name, float(factor), {**defaults, **options}))
    return out


def build_loss(spec=None, task: str = "multiclass", *, weight: torch.Tensor | None = None,
               reduction: str = "mean") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function ``(scores, target) -> scalar`` computing the (weighted sum of the) loss(es) in ``spec``.

    Args:
        spec: see ``parse_loss``.
        task: "multiclass", "binary" or "multilabel" (the shapes in the module's docstring).
        weight: class weights, ``(C,)`` float (multiclass) or ``(K,)`` (multilabel), or None.
        reduction: "mean" or "sum", for the per-pixel losses.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
    if weight is not None and task == "binary":
        raise ValueError("class weights do not apply to a binary task (one logit); use bce's pos_weight")
    terms = parse_loss(spec, task)

    def loss(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_shapes(scores, target, task)
        if not (target != IGNORE).any():  # nothing to learn from (all ignored): a zero that keeps the graph
            return scores.sum() * 0.0
        scores = scores.float()
        total = None
        for name, factor, options in terms:
            value = _FUNCTIONS[name](scores, target, task, weight, reduction, **options)
            value = value if factor == 1.0 else factor * value
            total = value if total is None else total + value
        return total

    return loss


def _check_shapes(scores: torch.Tensor, target: torch.Tensor, task: str) -> None:
    n, c = scores.shape[:2]
    want = (n, *scores.shape[2:]) if task != "multilabel" else tuple(scores.shape)
    if tuple(target.shape) != want:
        raise ValueError(f"{task} loss: target shape {tuple(target.shape)} does not fit scores "
                         f"{tuple(scores.shape)} (expected {want})")
    if task == "binary" and c != 1:
        raise ValueError(f"binary loss: scores must have 1 channel, got {c}")


def sample_cells(target: torch.Tensor, sample: float, stride: int) -> torch.Tensor:
    """The paper's loss sampling: each ``stride x stride`` cell is kept with probability ``sample``, the
    others set to 255 for this step. ``target`` is ``(N, H, W)`` or ``(N, K, H, W)``; one draw of
    ``torch.rand(N, 1, ceil(H/stride), ceil(W/stride))`` from the global RNG."""
    n, h, w = target.shape[0], target.shape[-2], target.shape[-1]
    keep = torch.rand(n, 1, -(-h // stride), -(-w // stride), device=target.device) < sample
    keep = keep.repeat_interleave(stride, 2).repeat_interleave(stride, 3)[:, :, :h, :w]
    keep = keep[:, 0] if target.dim() == 3 else keep
    return target.masked_fill(~keep, IGNORE)


def segmentation_loss(scores: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None,
                      reduction: str = "mean", sample: float = 1.0, stride: int = 32,
                      loss: Callable | None = None) -> torch.Tensor:
    """The training loss: loss sampling (``sample < 1``, see ``sample_cells``), then ``loss`` (a
    ``build_loss`` function; None: per-pixel multinomial logistic loss with ``weight`` and ``reduction``,
    ignoring 255 — fcnseg's original loss, unchanged)."""
    if sample < 1.0:
        target = sample_cells(target, sample, stride)
    if loss is not None:
        return loss(scores, target)
    if not (target != IGNORE).any():
        return scores.sum() * 0.0
    return F.cross_entropy(scores.float(), target, weight=weight, ignore_index=IGNORE, reduction=reduction)


# ------------------------------------------------------------------------------------------------------
# The losses. Each takes (scores float32, target, task, weight, reduction, **options).


def _reduce(per_pixel: torch.Tensor, valid: torch.Tensor, reduction: str, norm=None) -> torch.Tensor:
    total = (per_pixel * valid).sum()
    if reduction == "sum":
        return total
    return total / (valid.sum() if norm is None else norm)


def _ce(scores, target, task, weight, reduction):
    return F.cross_entropy(scores, target, weight=weight, ignore_index=IGNORE, reduction=reduction)


def _ohem(scores, target, task, weight, reduction, thresh, min_kept):
    valid = target != IGNORE
    losses = F.cross_entropy(scores, target, weight=weight, ignore_index=IGNORE, reduction="none")[valid]
    prob = scores.softmax(1).gather(1, target.masked_fill(~valid, 0)[:, None])[:, 0][valid]
    sorted_prob, order = prob.detach().sort()
    threshold = max(float(sorted_prob[min(int(min_kept), sorted_prob.numel() - 1)]), float(thresh))
    kept = losses[order][sorted_prob < threshold]
    if kept.numel() == 0:  # every pixel confident: nothing hard left
        return scores.sum() * 0.0
    return kept.sum() if reduction == "sum" else kept.mean()


def _one_hot(scores, target, task):
    """Probabilities and {0,1} float targets as ``(N, C, P)``, both zero at ignored pixels; and the
    validity mask."""
    n, c = scores.shape[:2]
    if task == "multiclass":
        prob = scores.log_softmax(1).exp().reshape(n, c, -1)
        t = target.reshape(n, 1, -1)
        valid = t != IGNORE
        onehot = F.one_hot(t[:, 0].masked_fill(~valid[:, 0], 0), c).permute(0, 2, 1).float()
    else:
        prob = F.logsigmoid(scores).exp().reshape(n, c, -1)
        t = target.reshape(n, c, -1) if task == "multilabel" else target.reshape(n, 1, -1)
        valid = t != IGNORE
        onehot = t.masked_fill(~valid, 0).float()
    return prob * valid, onehot * valid, valid


def _present_mean(per_class: torch.Tensor, present: torch.Tensor, weight) -> torch.Tensor:
    """Mean of ``per_class`` over the present classes (weighted by ``weight``); zero if none is."""
    w = present.float() if weight is None else present.float() * weight.to(per_class)
    if w.sum() == 0:
        return per_class.sum() * 0.0
    return (per_class * w).sum() / w.sum()


def _tversky(scores, target, task, weight, reduction, alpha, beta, gamma, smooth, eps, log_loss=False):
    prob, onehot, _ = _one_hot(scores, target, task)
    tp = (prob * onehot).sum((0, 2))
    fp = prob.sum((0, 2)) - tp
    fn = onehot.sum((0, 2)) - tp
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)
    per_class = -score.clamp_min(eps).log() if log_loss else 1.0 - score
    return _present_mean(per_class, onehot.sum((0, 2)) > 0, weight) ** gamma


def _dice(scores, target, task, weight, reduction, smooth, eps, log_loss):
    return _tversky(scores, target, task, weight, reduction, 0.5, 0.5, 1.0, smooth, eps, log_loss)


def _focal(scores, target, task, weight, reduction, gamma, alpha):
    valid = target != IGNORE
    if task == "multiclass":
        safe = target.masked_fill(~valid, 0)
        logp = scores.log_softmax(1).gather(1, safe[:, None])[:, 0]
        per_pixel = -((1 - logp.exp()) ** gamma) * logp
        if weight is None:
            return _reduce(per_pixel, valid, reduction)
        w = weight.to(scores)[safe] * valid
        return _reduce(per_pixel * w, valid, reduction, norm=w.sum())
    scores = scores[:, 0] if task == "binary" else scores
    t = target.masked_fill(~valid, 0).float()
    ce = F.binary_cross_entropy_with_logits(scores, t, reduction="none")
    p_t = torch.exp(-ce)
    per_pixel = (1 - p_t) ** gamma * ce
    if alpha is not None:
        per_pixel = per_pixel * (alpha * t + (1 - alpha) * (1 - t))
    if weight is not None:
        per_pixel = per_pixel * weight.to(scores).view(1, -1, 1, 1)
    return _reduce(per_pixel, valid, reduction)


def _bce(scores, target, task, weight, reduction, pos_weight):
    valid = target != IGNORE
    scores = scores[:, 0] if task == "binary" else scores
    t = target.masked_fill(~valid, 0).float()
    pw = None if pos_weight is None else torch.tensor(float(pos_weight), device=scores.device)
    per_pixel = F.binary_cross_entropy_with_logits(scores, t, reduction="none", pos_weight=pw)
    if weight is not None:
        per_pixel = per_pixel * weight.to(scores).view(1, -1, 1, 1)
    return _reduce(per_pixel, valid, reduction)


def _lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at sorted errors (Berman et al., Alg. 1)."""
    gts = gt_sorted.sum()
    jaccard = 1.0 - (gts - gt_sorted.cumsum(0)) / (gts + (1 - gt_sorted).cumsum(0))
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def _lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge over flat ``logits`` and {0,1} ``labels`` (ignored pixels already removed)."""
    if labels.numel() == 0:
        return logits.sum() * 0.0
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors_sorted, perm = errors.sort(descending=True)
    return torch.dot(F.relu(errors_sorted), _lovasz_grad(labels[perm]))


def _lovasz(scores, target, task, weight, reduction):
    n, c = scores.shape[:2]
    if task == "binary":
        valid = target != IGNORE
        return _lovasz_hinge(scores[:, 0][valid], target[valid].float())
    if task == "multilabel":
        per = [_lovasz_hinge(scores[:, k][target[:, k] != IGNORE], target[:, k][target[:, k] != IGNORE].float())
               for k in range(c)]
        return _present_mean(torch.stack(per), torch.ones(c, dtype=torch.bool, device=scores.device), weight)
    valid = target != IGNORE
    prob = scores.softmax(1).permute(0, 2, 3, 1).reshape(-1, c)[valid.reshape(-1)]
    labels = target[valid]
    per_class, present = [], []
    for k in range(c):
        fg = (labels == k).float()
        present.append(bool(fg.sum() > 0))
        errors_sorted, perm = (fg - prob[:, k]).abs().sort(descending=True)
        per_class.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])) if present[-1] else prob.sum() * 0)
    return _present_mean(torch.stack(per_class), torch.tensor(present, device=scores.device), weight)


_FUNCTIONS = {"ce": _ce, "ohem": _ohem, "dice": _dice, "tversky": _tversky, "focal": _focal, "lovasz": _lovasz,
              "bce": _bce}

__all__ = ["DEFAULT_LOSS", "IGNORE", "LOSSES", "TASKS", "build_loss", "parse_loss", "sample_cells",
           "segmentation_loss"]

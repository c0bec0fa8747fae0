"""What a model's scores mean, by task: probabilities and label maps from logits.

- ``multiclass``: ``C`` logits per pixel, softmax, the label is the most probable class (``0..C-1``).
- ``binary``: one logit per pixel, sigmoid; the label is 1 (foreground) where the probability is at least
  ``threshold``, else 0. Metrics and drawings use two classes (background, foreground).
- ``multilabel``: ``K`` logits, K independent sigmoids; class ``k`` is present where its probability is at
  least ``threshold``. A pixel may have none, one or several classes.
"""

from __future__ import annotations

import torch

TASKS = ("multiclass", "binary", "multilabel")


def check_task(task: str, threshold: float = 0.5) -> None:
    """Raises ValueError for an unknown task or a threshold outside (0, 1)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid: {', '.join(TASKS)}")
    if not 0 < float(threshold) < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")


def output_channels(task: str, num_classes: int) -> int:
    """Logits a model of ``task`` scores: 1 for binary (whose ``num_classes`` is 2), else ``num_classes``."""
    return 1 if task == "binary" else num_classes


def probabilities(scores: torch.Tensor, task: str = "multiclass") -> torch.Tensor:
    """Float32 probabilities from logits ``(N, C, H, W)``.

    Returns ``(N, C, H, W)``: softmax (multiclass), ``[1 - p, p]`` with ``p = sigmoid`` (binary, so ``C = 2``
    as for a two-class model), or per-channel sigmoids (multilabel).
    """
    scores = scores.float()
    if task == "multiclass":
        return scores.softmax(1)
    p = scores.sigmoid()
    if task == "binary":
        if p.shape[1] != 1:
            raise ValueError(f"a binary model scores 1 channel, got {p.shape[1]}")
        return torch.cat([1 - p, p], 1)
    return p


def decide(probs: torch.Tensor, task: str = "multiclass", threshold: float = 0.5, dim: int = 1) -> torch.Tensor:
    """Labels from ``probabilities``' output (or a positive multiple of it, e.g. a weighted sum of windows).

    ``dim`` is the class dimension. Returns int64: multiclass and binary drop ``dim`` (labels ``0..C-1``,
    binary ``{0, 1}``); multilabel keeps it (``{0, 1}`` per class).
    """
    if task == "multiclass":
        return probs.argmax(dim)
    if task == "binary":
        return (probs.select(dim, 1) >= threshold * probs.sum(dim)).long()
    return (probs >= threshold).long()


def labels_from_scores(scores: torch.Tensor, task: str = "multiclass", threshold: float = 0.5) -> torch.Tensor:
    """``decide(probabilities(scores))``; for multiclass just the argmax (no softmax needed)."""
    if task == "multiclass":
        return scores.argmax(1)
    return decide(probabilities(scores, task), task, threshold)


__all__ = ["TASKS", "check_task", "decide", "labels_from_scores", "output_channels", "probabilities"]

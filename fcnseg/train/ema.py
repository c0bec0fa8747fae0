"""An exponential moving average (EMA) of a run's weights and BatchNorm statistics (``ema_decay``): the weights
such a run validates, keeps as ``best`` and ships, as timm's ``ModelEmaV3`` and torchvision's classification
reference do. PyTorch's ``torch.optim.swa_utils.AveragedModel`` keeps the copy; the decay warms up as
TensorFlow's ``ExponentialMovingAverage(num_updates=...)`` does, so that the initial weights do not linger in
a short run (at decay 0.999 they would still weigh 6 % after 2800 steps)."""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel


def decay_at(decay: float, updates: int) -> float:
    """The decay of update number ``updates`` (0 is the first average after the copy): ``min(decay, (1 +
    updates) / (10 + updates))``, TensorFlow's warm-up."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def _update_fn(decay: float):
    """``AveragedModel``'s ``multi_avg_fn``: lists of averaged and current tensors of one device and dtype, and
    the count of updates so far (a 0-d tensor)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            # Counters (BatchNorm's num_batches_tracked) are not averaged: the model's count is the count.
            torch._foreach_copy_(averaged, current)
            return
        torch._foreach_lerp_(averaged, current, 1.0 - decay_at(decay, int(n_averaged) - 1))

    return update


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An EMA of ``model`` (a copy of it, parameters and buffers; ``.module`` is that copy, an FCN that
    ``save_model`` and ``evaluate`` take). ``ema.update_parameters(model)`` after each optimiser step: the first
    call copies the weights, each later one moves the average towards them by ``1 - decay_at(decay, n)``. Its
    ``state_dict`` (tensors only) goes into checkpoints; memory: one more copy of the model.

    Raises:
        ValueError: ``decay`` not in (0, 1).
    """
    if not 0 < decay < 1:
        raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
    return AveragedModel(model, multi_avg_fn=_update_fn(decay), use_buffers=True)

"""Hooks into a training run, for logging and monitoring: subclass ``Callback`` and pass instances to
``train(cfg, callbacks=[...])``."""

from __future__ import annotations

from pathlib import Path

from .state import TrainState


class Callback:
    """Does nothing at each point of a run; override the methods you need.

    Called in the order the callbacks were given, in the training process itself (an exception stops the
    run as any training error does). Under ``torchrun`` every process calls ``on_step_end`` and
    ``on_epoch_end``, and rank 0, the one that writes, ``on_checkpoint``. The ``state`` passed is the run's
    own: read it, do not change it.
    """

    def on_step_end(self, state: TrainState, logs: dict) -> None:
        """After each optimiser step (``state.step`` counts it) and its log row.

        ``logs``: ``loss`` (float, this process's batch), ``lr`` (float, the first parameter group's rate for
        the next step) and ``images_per_s`` (float, the epoch's rate so far, all processes together).
        """

    def on_epoch_end(self, state: TrainState, metrics: dict) -> None:
        """After each epoch and its validation, before its checkpoint; ``state.epoch`` counts the epoch.

        ``metrics``: the validation scores when the epoch was validated (``fcnseg.evaluate.evaluate``'s dict:
        ``mean_iu``, ``pixel_acc``, ...), else empty.
        """

    def on_checkpoint(self, state: TrainState, path: Path) -> None:
        """After a training checkpoint was written, whole, to ``path`` (``OUT/last.pt``); rank 0 only."""

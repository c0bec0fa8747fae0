"""Where a run is: ``TrainState``, the counters and random-number state that a checkpoint saves and a resume
restores."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass
class TrainState:
    """The position of a run, as saved in ``last.pt`` beside the model and optimiser.

    ``epoch`` and ``batch``: the next batch to train (a resumed run starts there); ``step``: optimiser steps
    taken; ``best``: the best validation score so far (mean IU, or foreground IU for binary tasks; -1: none
    yet); ``train_seconds``: seconds spent in training steps, validation excluded (for curves against time).
    The random-number state (torch, Python, CUDA where present) is not a field: ``state_dict`` reads the
    process's current one and ``load_state_dict`` sets it, so the resumed run draws the same numbers.
    """

    epoch: int = 0
    batch: int = 0
    step: int = 0
    best: float = -1.0
    train_seconds: float = 0.0

    def state_dict(self) -> dict:
        """``{"epoch", "batch", "step", "best", "train_seconds", "rng"}``: the checkpoint's entries for the state."""
        return {"epoch": self.epoch, "batch": self.batch, "step": self.step, "best": self.best,
                "train_seconds": self.train_seconds, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        """Takes the counters from a checkpoint's entries and restores its random-number state.

        Raises:
            KeyError: an entry other than ``train_seconds`` (absent from older checkpoints: 0) is missing.
        """
        self.epoch, self.batch, self.step, self.best = state["epoch"], state["batch"], state["step"], state["best"]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        set_rng_state(state["rng"])


def rng_state() -> dict:
    """The process's random-number state: torch's CPU generator, Python's ``random`` and, with CUDA, every GPU's."""
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_pos": random.getstate()[0]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restores a state from ``rng_state`` (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_pos"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

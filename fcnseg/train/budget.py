"""A time budget for a run (``time_budget_min``): how many steps fit, planned from the run's own timings.

The poly schedule decays to zero at the last step, so the step count must be known early: the run times its
first ``PROBE_STEPS`` steps, sets the total to what fits in the budget (``steps_within``), and plans again after
each validation with its measured cost. Pure functions of numbers; ``fcnseg.train.loop.plan_budget`` applies
them to a run."""

from __future__ import annotations

PROBE_STEPS = 10
# A forward pass costs about a third of a training step (forward and backward) per pixel.
FORWARD_SHARE = 1 / 3


def validations_between(done: int, total: int, every: int | None) -> int:
    """Validations a run makes after step ``done`` up to step ``total``: one each ``every`` steps (the end of
    every ``val_every``-th epoch) and one at the end; 0 where ``every`` is None (no validation split)."""
    if every is None or total <= done:
        return 0
    return total // every - done // every + (total % every != 0)


def steps_within(left_s: float, step_s: float, val_s: float, done: int, cap: int, every: int | None) -> int:
    """The largest total step count ``T``, ``done <= T <= cap``, whose ``T - done`` remaining steps of ``step_s``
    seconds and their validations (``validations_between``) of ``val_s`` seconds each fit in ``left_s``
    seconds; ``done`` (stop now) where not even one more step does.

    Raises:
        ValueError: a step time that is not positive.
    """
    if step_s <= 0:
        raise ValueError(f"step time must be positive, got {step_s}")

    def fits(total: int) -> bool:
        return (total - done) * step_s + validations_between(done, total, every) * val_s <= left_s

    lo, hi = done, max(done, cap)
    while lo < hi:  # fits() is monotone in T: the largest T that fits, by bisection
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def validation_estimate(step_s: float, val_pixels: int, step_pixels: int) -> float:
    """Seconds for one validation before any was timed: forward passes over ``val_pixels`` pixels at the
    training rate of ``step_pixels`` pixels per ``step_s`` seconds, a forward pass being ``FORWARD_SHARE`` of
    a training step."""
    return step_s * FORWARD_SHARE * val_pixels / max(step_pixels, 1)

"""A time budget for training (``time_budget_min``): the plan's arithmetic against brute force, and real runs
that stop within the budget, record their plan so that they repeat, and keep it when resumed."""

import csv
import random
import time
from dataclasses import replace

import pytest
import yaml
from helpers import StopAt
from test_train import tiny

from fcnseg.train import load_config, train
from fcnseg.train.budget import PROBE_STEPS, steps_within, validation_estimate, validations_between


def _brute_force(left_s, step_s, val_s, done, cap, every):
    best = done
    for total in range(done, cap + 1):
        vals = 0 if every is None else sum(1 for s in range(done + 1, total + 1) if s % every == 0 or s == total)
        if (total - done) * step_s + vals * val_s <= left_s:
            best = total
    return best


def test_validations_between_counts_each_period_and_the_end():
    assert validations_between(10, 45, 20) == 3  # steps 20, 40 and the last, 45
    assert validations_between(10, 40, 20) == 2  # the last is a period's end: once
    assert validations_between(40, 40, 20) == 0 and validations_between(10, 45, None) == 0


def test_steps_within_is_the_largest_total_that_fits():
    rng = random.Random(0)
    for _ in range(300):
        args = (rng.uniform(0, 60), rng.uniform(0.05, 2.0), rng.uniform(0, 10), rng.randrange(0, 30),
                rng.randrange(0, 200), rng.choice([None, 1, 3, 7, 50]))
        assert steps_within(*args) == _brute_force(*args), args
    assert steps_within(100.0, 1.0, 0.0, 10, 1000, None) == 110
    assert steps_within(100.0, 1.0, 0.0, 10, 50, None) == 50  # the config's cap holds
    assert steps_within(0.5, 1.0, 0.0, 10, 1000, None) == 10  # not one more step: stop now
    with pytest.raises(ValueError, match="step time must be positive"):
        steps_within(10.0, 0.0, 0.0, 0, 10, None)
    assert validation_estimate(3.0, 1000, 1000) == pytest.approx(1.0)


def _steps(out):
    with open(out / "train_log.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.mark.slow  # about 30 s: a real run that must outlast its budget
def test_a_budget_stops_the_run_in_time_and_its_config_records_the_plan(tmp_path, shapes, capsys):
    budget_min, cap = 0.4, 10000 * 3  # 6 images at batch 2: far more steps than 24 s allow
    cfg = load_config(None, tiny(shapes, tmp_path, epochs=10000, max_steps=None, val_every=20,
                                 time_budget_min=budget_min))
    tick = time.perf_counter()
    train(cfg)
    took = time.perf_counter() - tick
    printed = capsys.readouterr().out
    assert f"at most {cap} steps" in printed and f"as many as fit in {budget_min:g} min" in printed
    steps = _steps(tmp_path)
    assert f"time budget {budget_min:g} min: {steps[-1]} steps in all" in printed
    assert PROBE_STEPS <= steps[-1] < cap and steps == list(range(1, steps[-1] + 1))
    # Within the budget on a quiet machine (docs/training.md gives real runs); the slack is for a loaded one:
    # without the budget, 30000 steps would take hours.
    assert took < 2 * budget_min * 60 + 30, took
    # config.yaml repeats the run (a run repeats from its config.yaml: tests/test_own_data.py): the plan is
    # recorded as max_steps, with no budget, and nothing else differs.
    saved = load_config(tmp_path / "config.yaml")
    assert saved.max_steps == steps[-1] and saved.time_budget_min is None
    assert replace(saved, max_steps=None, time_budget_min=budget_min) == cfg


@pytest.mark.slow
def test_a_resumed_budgeted_run_keeps_its_plan(tmp_path, shapes):
    cfg = load_config(None, tiny(shapes, tmp_path, epochs=10000, max_steps=None, val_every=20,
                                 time_budget_min=0.4, ckpt_every=1))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAt(PROBE_STEPS + 3)])
    planned = yaml.safe_load((tmp_path / "config.yaml").read_text())["max_steps"]
    assert planned > PROBE_STEPS + 3  # a resumed run planning again from its own clock would take more
    train(cfg, resume="auto")
    assert _steps(tmp_path)[-1] == planned
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["max_steps"] == planned


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="time_budget_min must be > 0"):
        load_config(None, ["time_budget_min=0"])
    with pytest.raises(ValueError, match="max_steps must be >= 1"):
        load_config(None, ["max_steps=0"])

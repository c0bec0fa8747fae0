"""``amp: auto`` on the CPU: bf16 only where a timed step shows it faster, decided once per run and kept on resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_train import tiny

from fcnseg.io.checkpoint import load_checkpoint
from fcnseg.runtime.amp import AmpChoice, dtype_from_name, faster_autocast, median_ms
from fcnseg.runtime.cpu import cpu_has_fast_bf16
from fcnseg.train import load_config, train
from fcnseg.train.loop import choose_amp, setup
from fcnseg.train.state import rng_state

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _sleeper(fp32_ms: float, bf16_ms: float):
    calls = []

    def step(dtype):
        calls.append(dtype)
        time.sleep((bf16_ms if dtype is torch.bfloat16 else fp32_ms) / 1000)
    return step, calls


def test_median_ms_times_each_call():
    assert 9 <= median_ms(lambda: time.sleep(0.01), repeats=3, warmup=0) < 60


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="needs a CPU with native bf16 (AVX512-BF16 or AMX)")
def test_faster_autocast_keeps_bf16_only_when_it_wins_by_the_margin():
    step, calls = _sleeper(40, 10)
    choice = faster_autocast(step, CPU, repeats=2, warmup=1)
    assert choice.dtype is torch.bfloat16 and choice.name == "bf16"
    assert calls == [None] * 3 + [torch.bfloat16] * 3  # warm-up and timed calls in each dtype
    assert choice.ms["fp32"] > 3 * choice.ms["bf16"] and "bf16 (median step: fp32" in choice.describe()
    step, _ = _sleeper(100, 100)  # no faster: fp32 stays (the margin absorbs a sleep's overshoot)
    assert faster_autocast(step, CPU, repeats=2, warmup=0).dtype is None


def test_faster_autocast_times_nothing_where_bf16_is_not_native(monkeypatch):
    import fcnseg.runtime.amp as amp

    monkeypatch.setattr(amp, "cpu_has_fast_bf16", lambda: False)  # an AVX2-only CPU
    step, calls = _sleeper(40, 1)
    choice = faster_autocast(step, CPU)
    assert choice.dtype is None and calls == [] and "no native bf16" in choice.describe()
    assert faster_autocast(step, torch.device("meta")).reason == "not timed on meta" and calls == []


def test_dtype_names_round_trip():
    for name in ("fp32", "bf16", "fp16"):
        assert AmpChoice(dtype_from_name(name), {}).name == name
    with pytest.raises(ValueError, match="unknown autocast dtype 'int8'"):
        dtype_from_name("int8")


def test_choose_amp_leaves_weights_statistics_and_random_numbers_alone(tmp_path, shapes):
    run = setup(load_config(None, tiny(shapes, tmp_path / "run", amp="auto")))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    rng = rng_state()
    choose_amp(run)
    assert run.amp_chosen and run.amp_dtype in ((None, torch.bfloat16) if cpu_has_fast_bf16() else (None,))
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running statistics included
    assert all(p.grad is None for p in run.model.parameters())
    assert torch.equal(rng["torch"], torch.get_rng_state())


def test_auto_run_records_its_choice_and_a_resume_keeps_it(tmp_path, shapes):
    out = tmp_path / "run"
    cfg = load_config(None, tiny(shapes, out, amp="auto", epochs=1, val_split=None))
    train(cfg)
    saved = load_checkpoint(out / "last.pt")
    assert saved["amp"] in ("fp32", "bf16")
    # A resumed run computes as the interrupted one did, whatever a new timing would say.
    forced = "bf16" if saved["amp"] == "fp32" else "fp32"
    saved["amp"] = forced
    torch.save(saved, out / "last.pt")
    run = setup(load_config(None, tiny(shapes, out, amp="auto", epochs=2, val_split=None)))
    from fcnseg.train.loop import resume_from
    from fcnseg.train.state import TrainState

    resume_from(run, TrainState(), "auto")
    choose_amp(run)
    assert run.amp_dtype is dtype_from_name(forced)


def test_evaluate_amp_auto_prints_and_records_the_choice(tmp_path, shapes, tiny_model_file):
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "evaluate", "--model", str(tiny_model_file),
                        "--dataset", "folder", "--root", str(shapes), "--split", "val", "--amp", "auto",
                        "--out", str(tmp_path / "eval")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert f"amp auto: {metrics['amp']}" in r.stdout
    if not cpu_has_fast_bf16():
        assert metrics["amp"] == "fp32" and "no native bf16" in r.stdout

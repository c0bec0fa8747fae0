"""Faults during training: SIGKILL at random points (one inside a checkpoint write), a full disk, a worker killed
under `torchrun --max-restarts`, and a hostile pickle given as a checkpoint. Each costs at most the steps since
the last checkpoint; see docs/robustness.md."""

import contextlib
import csv
import errno
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_shapes
from safetensors.torch import load_file
from test_train import _args, tiny

from fcnseg.io.atomic import WriteError, stale_temp_files
from fcnseg.io.checkpoint import load_checkpoint
from fcnseg.io.modelfile import load_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}
RUNNER = str(Path(__file__).resolve().parent / "train_runner.py")  # `fcnseg train` with faults injected


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**ENV, **(env or {})}, timeout=timeout)


def _steps_logged(out: Path) -> list[int]:
    with open(out / "train_log.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _everything_readable(out: Path) -> int | None:
    """Loads every checkpoint and model file in ``out``; returns the checkpoint's step (None: none yet)."""
    for f in out.glob("*.safetensors"):
        load_model(f)
    return load_checkpoint(out / "last.pt")["step"] if (out / "last.pt").exists() else None


def _wait(proc: subprocess.Popen, until, what: str, limit: float = 120) -> None:
    deadline = time.time() + limit
    while not until():
        assert proc.poll() is None, f"the run ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class _Checkpoints:
    """Reads last.pt's step each time the file is replaced (cheap to poll: one stat per call)."""

    def __init__(self, path: Path) -> None:
        self.path, self.mtime, self.step = path, None, 0

    def __call__(self) -> int:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0
        if mtime != self.mtime:
            self.mtime, self.step = mtime, torch.load(self.path, weights_only=True)["step"]
        return self.step


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_matches_an_uninterrupted_run(tmp_path, shapes):
    """Three SIGKILLs at seeded random points, one of them inside a checkpoint write; after each, every file is
    readable; each restart resumes; the finished weights equal an uninterrupted run's bit for bit."""
    # 6 steps, 3 per epoch, a checkpoint after each; loss sampling and colour jitter draw random numbers too.
    common = dict(epochs=2, ckpt_every=1, loss_sample=0.7, color_jitter=0.2, val_split=None)
    ref = _cli("train", *_args(tiny(shapes, tmp_path / "ref", **common)))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    args = ["--resume", *_args(tiny(shapes, out, **common))]  # --resume: fresh when there is no last.pt
    rng = random.Random(6)
    plan = [("after checkpoint", rng.randint(1, 2), rng.uniform(0.0, 0.3)),
            ("inside a checkpoint write", rng.randint(3, 4), 0.0),
            ("after checkpoint", 5, rng.uniform(0.0, 0.3))]
    steps = [0]
    for kind, at_step, delay in plan:
        inside = kind.startswith("inside")
        # Inside: every write of last.pt pauses 0.5 s with its temporary file complete and not yet renamed.
        pause = ["--pause-checkpoint-writes", "0.5"] if inside else []
        proc = subprocess.Popen([sys.executable, RUNNER, *pause, *args], cwd=REPO, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ckpt = _Checkpoints(out / "last.pt")
        try:
            _wait(proc, lambda c=ckpt, s=at_step: c() >= s, f"the checkpoint of step {at_step}")
            if inside:
                _wait(proc, lambda: any(p.name.startswith(".last.pt.") for p in stale_temp_files(out)),
                      "a checkpoint write")
            time.sleep(delay)
            assert proc.poll() is None, "the run ended before it was killed"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if inside:
            assert [p.name for p in stale_temp_files(out) if p.name.startswith(".last.pt.")], "not killed in a write"
        step = _everything_readable(out)
        assert step is not None and step >= at_step and step > steps[-1], (kind, step, steps)
        assert not (out / "model.safetensors").exists()
        steps.append(step)
    resumed = _cli("train", *args)  # the real CLI finishes the run
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'last.pt'}: epoch" in resumed.stdout
    a, b = load_file(tmp_path / "ref" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bitwise: same batches, augmentations and loss samples
    assert _steps_logged(out) == list(range(1, 7))  # each step logged once, across four processes
    assert not stale_temp_files(out)  # the temporary left by the kill in a write was cleared on resume


@contextlib.contextmanager
def _small_disk(where: Path, megabytes: int):
    """A real filesystem of ``megabytes`` (tmpfs) when this process may mount one, else None."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(where)], capture_output=True).returncode == 0
    try:
        yield where if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.slow
def test_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """The second checkpoint does not fit (an atomic write needs room for the old file and the new one): the run
    stops, exit 2, one line naming last.pt and ENOSPC; the first checkpoint is intact and resumes once there
    is room. Without the right to mount a small filesystem, torch.save is made to fail the same way."""
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    cfg = tiny(shapes, tmp_path / "disk" / "run", epochs=1, ckpt_every=1, val_split=None)  # 3 steps
    with _small_disk(tmp_path / "disk", 60) as disk:  # one 41 MB checkpoint fits, two do not
        if disk is not None:
            r = _cli("train", *_args(cfg))
            code, err = r.returncode, r.stderr
        else:
            real_save, calls = torch.save, []

            def save(obj, f, *a, **kw):
                calls.append(1)
                if len(calls) == 1:
                    return real_save(obj, f, *a, **kw)
                f.write(b"PK\x03\x04 part of a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(torch, "save", save)
            from fcnseg.cli import main

            code, err = main(["train", *_args(cfg)]), capsys.readouterr().err
            monkeypatch.undo()
        run = tmp_path / "disk" / "run"
        assert code == 2
        lines = err.strip().splitlines()
        assert lines == [f"fcnseg: error: {run / 'last.pt'}: could not write (No space left on device); any "
                         "previous file there is unchanged; training stopped at step 2 (the checkpoint of step 1 "
                         "is kept)"], err
        assert load_checkpoint(run / "last.pt")["step"] == 1
        assert not stale_temp_files(run) and not (run / "model.safetensors").exists()
        if disk is not None:  # room again: the run resumes from step 1 and finishes
            subprocess.run(["mount", "-o", "remount,size=200m", str(disk)], check=True)
            r = _cli("train", "--resume", *_args(cfg))
            assert r.returncode == 0, r.stderr
            assert "resumed from" in r.stdout and _steps_logged(run) == [1, 2, 3]
            assert load_checkpoint(run / "last.pt")["step"] == 3 and (run / "model.safetensors").is_file()


def test_write_errors_name_the_file_and_leave_the_old_one(tmp_path, monkeypatch):
    """The atomic writer itself: a failing write of a model file leaves the old file and no temporary."""
    from fcnseg.io.checkpoint import save_checkpoint

    save_checkpoint({"model": {}, "config": {}, "step": 1}, tmp_path / "c.pt")

    def broken(obj, f, *a, **kw):
        f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(WriteError, match=r"c\.pt: could not write \(No space left on device\)") as e:
        save_checkpoint({"model": {}, "config": {}, "step": 2}, tmp_path / "c.pt")
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 1 and not stale_temp_files(tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-checkpoint",))


def test_a_malicious_pickle_checkpoint_is_refused_without_running(tmp_path, shapes):
    """A checkpoint whose unpickling would run a shell command: refused by resume, init_from, load and the CLI,
    and the command never runs."""
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {"arch": "fcn8s"}, "payload": _Evil()}, evil)
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable fcnseg checkpoint \(Weights only load failed"):
        load_checkpoint(evil)
    with pytest.raises(ValueError, match=r"evil\.pt: not a safetensors model file"):
        load_model(evil)
    cfg = tiny(shapes, tmp_path / "run", epochs=1, val_split=None)
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", "--resume-from", str(evil), *_args(cfg)],
                       capture_output=True, text=True, cwd=tmp_path, env={**ENV, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and f"fcnseg: error: {evil}: not a readable fcnseg checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned-by-checkpoint").exists() and not Path("pwned-by-checkpoint").exists()


@pytest.mark.slow
def test_torchrun_restarts_a_killed_worker_and_the_run_resumes(tmp_path):
    """`torchrun --max-restarts 1`: rank 1 SIGKILLs itself after step 3 (once, by the test runner's callback);
    torchrun stops rank 0 and starts both again; they resume from last.pt and finish, each of the 4 steps logged
    once."""
    shapes = make_shapes(tmp_path / "shapes", n=12, splits=True)  # 9 train images: 2 steps per epoch on 2 ranks
    out = tmp_path / "ddp"
    marker = tmp_path / "fault-done"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "1", "--monitor-interval", "0.5", RUNNER, "--kill-after-step", "3", "--kill-rank", "1",
           "--marker", str(marker), "--resume", *_args(tiny(shapes, out, epochs=2, threads=1, ckpt_every=1,
                                                            val_every=2))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FCNSEG_DIST_TIMEOUT": "120"}
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert marker.is_file() and "fault injection: rank 1 kills itself after step 3" in log
    assert "resumed from" in r.stdout, log[-4000:]  # the second attempt started from the checkpoint
    assert _steps_logged(out) == [1, 2, 3, 4]
    assert load_checkpoint(out / "last.pt")["step"] == 4 and (out / "model.safetensors").is_file()
    assert time.time() - t < 240


def test_resume_drops_log_rows_after_the_checkpoint_and_a_row_cut_by_the_kill(tmp_path):
    """The log holds steps 1..12 and the start of step 13's row ("1"), cut by the kill; the checkpoint is at 10."""
    from fcnseg.train import TrainConfig
    from fcnseg.train.logs import TrainLogger

    header = "step,epoch,loss,lr,images_per_s,seconds\n"
    rows = "".join(f"{i},1,0.5,0.1,1.0,{i}.0\n" for i in range(1, 13))
    (tmp_path / "train_log.csv").write_text(header + rows + "1")
    logger = TrainLogger(tmp_path, TrainConfig(out=str(tmp_path), tensorboard=False), step=10)
    logger.step(11, 1, 0.4, 0.1, 1.0)
    logger.close()
    assert _steps_logged(tmp_path) == list(range(1, 12))
    assert not stale_temp_files(tmp_path)

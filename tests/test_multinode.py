"""Multi-node training: two ``torchrun`` launchers on 127.0.0.1 acting as two nodes (c10d rendezvous, one process
each) train the same weights as one single-node ``torchrun --standalone --nproc-per-node 2``; when node 1's
launcher dies mid-run, node 0 stops within FCNSEG_DIST_TIMEOUT with nothing half-written; and with
``--max-restarts 1`` both nodes restart after a worker dies and resume. See docs/training.md, "Several machines"."""

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from helpers import free_port, make_shapes
from safetensors.torch import load_file
from test_faults import _steps_logged
from test_train import _args, tiny

from fcnseg.io.atomic import stale_temp_files
from fcnseg.io.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "FCNSEG_DIST_TIMEOUT": "30"}
CLI = ["-m", "fcnseg.cli", "train"]


def _node_cmd(rank: int, port: int, run_id: str, cfg: dict, *extra: str, program: list[str] = CLI) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
            "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
            "--rdzv-id", run_id, "--monitor-interval", "0.5", *extra, *program,
            *(["--resume"] if "--max-restarts" in extra else []), *_args(cfg)]


def _two_nodes(cfg: dict, log_dir: Path, *extra: str, program: list[str] = CLI
               ) -> tuple[list[subprocess.Popen], list[Path]]:
    """Starts both launchers together; node 0 hosts the c10d rendezvous store on a free loopback port.
    ``program``: what each worker runs (default ``fcnseg train``; the faults tests' runner with its options)."""
    port, run_id = free_port(), uuid.uuid4().hex[:8]
    procs, logs = [], []
    for rank in (0, 1):
        logs.append(log_dir / f"node{rank}.log")
        with open(logs[-1], "w") as f:
            procs.append(subprocess.Popen(_node_cmd(rank, port, run_id, cfg, *extra, program=program), cwd=REPO,
                                          env=ENV, stdout=f, stderr=subprocess.STDOUT))
    return procs, logs


def _kill_node(proc: subprocess.Popen) -> None:
    """SIGKILLs a launcher and its workers, as if the machine died (torchrun starts each worker in a session of
    its own, so killing the launcher's process group would leave them running)."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for pid in [proc.pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            _kill_node(p)


@pytest.mark.slow
def test_two_nodes_train_the_same_weights_as_one_node_with_two_processes(tmp_path):
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)  # 6 train images, batch 2 on 2 ranks: 1 step an epoch
    common = dict(epochs=2, threads=1, val_split=None, seed=0)
    single = tiny(shapes, tmp_path / "single", **common)
    multi = tiny(shapes, tmp_path / "multi", **common)
    t = time.time()
    procs, logs = _two_nodes(multi, tmp_path)
    try:
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "fcnseg.cli", "train", *_args(single)], capture_output=True, text=True,
                           cwd=REPO, env=ENV, timeout=240)
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        _stop(procs)
    node_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert codes == [0, 0], node_logs
    assert _steps_logged(tmp_path / "single") == _steps_logged(tmp_path / "multi") == [1, 2]
    a, b = load_file(tmp_path / "single" / "model.safetensors"), load_file(tmp_path / "multi" / "model.safetensors")
    assert a.keys() == b.keys()
    # Exactly equal: with two ranks gloo's allreduce adds two numbers, and a + b == b + a in floating point, so
    # the order of the ranks cannot change a bit; the data each rank reads depends on its global rank only.
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert not (tmp_path / "multi" / "model.safetensors").is_dir() and time.time() - t < 200


@pytest.mark.slow
def test_when_node_1_dies_node_0_stops_within_the_timeout_and_nothing_is_half_written(tmp_path):
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    out = tmp_path / "multi"
    cfg = tiny(shapes, out, epochs=5000, threads=1, val_split=None, ckpt_every=5)  # minutes: killed early
    procs, logs = _two_nodes(cfg, tmp_path)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists():  # training has started: rank 0 wrote a checkpoint
            assert all(p.poll() is None for p in procs), "\n".join(p.read_text()[-2000:] for p in logs)
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.1)
        time.sleep(1)
        _kill_node(procs[1])
        t = time.time()
        code = procs[0].wait(timeout=90)
        waited = time.time() - t
    finally:
        _stop(procs)
    log = logs[0].read_text()
    assert code != 0, log[-3000:]
    assert waited < 30 + 20, (waited, log[-3000:])  # FCNSEG_DIST_TIMEOUT plus the launcher's own shutdown
    # Rank 0's worker fails in gloo ("Connection closed by peer [ADDR]:PORT" or "Read error [ADDR]:PORT: Connection
    # reset by peer"): gloo names the lost peer's address, not its rank; fcnseg's line starts "rank 0 of 2: " and
    # the launcher's summary names rank 0 (the one that failed here). Or the launcher loses the c10d store first
    # (node 1 may hold it, both launchers being on one host) and exits non-zero itself.
    assert "peer" in log and ("fcnseg: error:" in log or "RendezvousConnectionError" in log), log[-3000:]
    assert "fcnseg: error:" not in log or "fcnseg: error: rank 0 of 2: " in log, log[-3000:]  # the reporting rank
    assert not stale_temp_files(out)
    assert load_checkpoint(out / "last.pt")["step"] >= 1
    print(f"node 0 stopped {waited:.1f} s after node 1 died; its log ends:\n{log[-1500:]}")


@pytest.mark.slow
def test_two_nodes_restart_together_after_a_worker_dies_and_resume(tmp_path):
    """`--max-restarts 1` on both launchers: rank 1 (node 1) SIGKILLs itself after step 3 (a callback of the test
    runner); rank 0 fails in gloo and exits at once ("rank 0 of 2: ..."), both agents count one failure, meet
    again, and both workers resume from last.pt with the same store prefix (attempt 1) and finish."""
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    out = tmp_path / "multi"
    cfg = tiny(shapes, out, epochs=6, threads=1, val_split=None, ckpt_every=1)
    runner = [str(REPO / "tests" / "train_runner.py"), "--kill-after-step", "3", "--kill-rank", "1", "--marker",
              str(tmp_path / "m")]
    procs, logs = _two_nodes(cfg, tmp_path, "--max-restarts", "1", program=runner)
    try:
        codes = [p.wait(timeout=150) for p in procs]
    finally:
        _stop(procs)
    log = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs)
    assert codes == [0, 0], log
    assert "fault injection: rank 1 kills itself after step 3" in log and "resumed from" in log, log
    assert _steps_logged(out) == [1, 2, 3, 4, 5, 6]
    assert load_checkpoint(out / "last.pt")["step"] == 6 and not stale_temp_files(out)

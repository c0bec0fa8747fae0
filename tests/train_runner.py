"""`fcnseg train` with faults injected from the test side (tests/test_faults.py, tests/test_multinode.py, and by
hand: docs/robustness.md). fcnseg itself knows nothing of this: the faults are a ``Callback`` and a wrapper
around the rename that ends an atomic write.

    python tests/train_runner.py [--kill-after-step N [--kill-rank R] [--marker FILE]]
        [--pause-checkpoint-writes SECONDS] [fcnseg train's arguments: --config, --resume, key=value, ...]

``--kill-after-step N``: rank R (default 0) SIGKILLs itself right after step N, once: only while FILE does not
exist, and it creates it first, so the run restarted by ``torchrun --max-restarts`` goes through.
``--pause-checkpoint-writes S``: every write of ``last.pt`` waits S seconds with its temporary file complete but
not yet renamed, so a test can kill the process inside a write.
Works under ``torchrun`` as a script. Errors end the process as the CLI's do: one line, exit 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's fcnseg, as `-m fcnseg.cli` from it

import torch.distributed as dist  # noqa: E402

from fcnseg.cli import _rank_prefix, build_parser, one_line  # noqa: E402
from fcnseg.train import Callback, load_config, train  # noqa: E402


class KillAfterStep(Callback):
    """SIGKILLs this process right after optimiser step ``step`` on rank ``rank``, once per ``marker`` file."""

    def __init__(self, step: int, rank: int, marker: Path) -> None:
        self.step, self.rank, self.marker = step, rank, marker

    def on_step_end(self, state, logs: dict) -> None:
        rank = dist.get_rank() if dist.is_initialized() else 0
        if state.step != self.step or rank != self.rank or self.marker.exists():
            return
        self.marker.write_text(f"killed rank {rank} after step {state.step}\n")
        print(f"fault injection: rank {rank} kills itself after step {state.step}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def pause_checkpoint_writes(seconds: float) -> None:
    """Holds each rename onto a file named ``last.pt`` for ``seconds`` (atomic_write renames its complete,
    fsynced temporary file last)."""
    rename = os.replace

    def paused(src, dst, *args, **kwargs):
        if Path(dst).name == "last.pt":
            time.sleep(seconds)
        return rename(src, dst, *args, **kwargs)

    os.replace = paused


def main(argv: list[str]) -> int:
    faults = argparse.ArgumentParser(add_help=False)
    faults.add_argument("--kill-after-step", type=int)
    faults.add_argument("--kill-rank", type=int, default=0)
    faults.add_argument("--marker", type=Path, default=Path("fcnseg-fault-done"))
    faults.add_argument("--pause-checkpoint-writes", type=float, metavar="SECONDS")
    fault, rest = faults.parse_known_args(argv)
    args = build_parser().parse_args(["train", *rest])  # the CLI's own arguments, read as it reads them
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    callbacks = []
    if fault.kill_after_step is not None:
        callbacks.append(KillAfterStep(fault.kill_after_step, fault.kill_rank, fault.marker))
    if fault.pause_checkpoint_writes:
        pause_checkpoint_writes(fault.pause_checkpoint_writes)
    try:
        train(load_config(args.config, overrides), resume=args.resume, callbacks=callbacks)
    except Exception as e:
        # As the CLI: one line; and leave at once (a lost peer can block leaving the process group for good).
        print(f"fcnseg: error: {_rank_prefix(e)}{one_line(e)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

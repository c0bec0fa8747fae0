"""Runs a command and reports its peak resident memory, measured from outside it by the kernel.

    python benchmarks/peak_rss.py fcnseg predict big.jpg --out /tmp/pred

Prints the command's output, then ``peak RSS: N MB`` (from ``wait4``'s ``ru_maxrss``), and exits with the
command's status. This script is small when it forks, so the figure is the command's own: Linux starts a
forked child's peak at the parent's resident size, which would inflate the figure if, say, a test process
holding a model forked the command directly.
"""

from __future__ import annotations

import os
import sys


def run(argv: list[str]) -> tuple[int, float]:
    """(exit status, peak RSS in MB) of ``argv``."""
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 1024


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    code, mb = run(sys.argv[1:])
    print(f"peak RSS: {mb:.0f} MB", file=sys.stderr)
    sys.exit(code)

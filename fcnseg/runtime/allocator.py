"""The process's memory allocator, and training under tcmalloc where it is installed.

glibc's malloc serves every block over 32 MiB with a fresh ``mmap`` and returns it on ``free``, so each large
activation or gradient of a training step is page-faulted in again, zeroed by the kernel, at every step; tcmalloc
keeps freed memory for reuse. Measured on a 2-core AMD EPYC Zen 4 (docs/training.md, ``python
benchmarks/train_throughput.py --only channels_last --arch fcn4s --no-eval --steps 16``): the shipped recipe trained
at 7.16 images/s under glibc and 10.11 under tcmalloc (1.41x). PyTorch's CPU tuning guide recommends the same.
An allocator must be chosen before the process starts (``LD_PRELOAD``), so ``fcnseg train`` starts itself again
under it (``reexec_under_tcmalloc``); ``FCNSEG_ALLOCATOR=system`` keeps the system's.
"""

from __future__ import annotations

import ctypes.util
import os
import sys
from pathlib import Path

# Debian/Ubuntu's libtcmalloc-minimal4 and gperftools' libtcmalloc, then other distributions' places.
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
_GUARD = "FCNSEG_ALLOCATOR_REEXEC"  # set in the restarted process: never restart twice


def loaded_allocator(maps: str | os.PathLike = "/proc/self/maps") -> str:
    """"tcmalloc" or "jemalloc" where that library is mapped into the process (``maps``: a ``/proc/PID/maps``
    file), else "system" (glibc's malloc on Linux; also the answer where ``maps`` cannot be read)."""
    try:
        text = Path(maps).read_text()
    except OSError:
        return "system"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in text:
            return name
    return "system"


def find_tcmalloc() -> Path | None:
    """The tcmalloc shared library on this machine (``apt install libtcmalloc-minimal4`` on Debian/Ubuntu), or
    None: the usual library folders first, then ``ctypes.util.find_library``."""
    for folder in _DIRS:
        for name in _NAMES:
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found and Path(found).is_absolute() and Path(found).is_file():
            return Path(found)
    return None


def tcmalloc_env(env: dict[str, str]) -> dict[str, str] | None:
    """``env`` with tcmalloc prepended to ``LD_PRELOAD``, for a process to start under it; None where that should
    not happen: not Linux, ``FCNSEG_ALLOCATOR=system``, already restarted once, tcmalloc or jemalloc already
    loaded, or no tcmalloc installed."""
    if not sys.platform.startswith("linux") or env.get("FCNSEG_ALLOCATOR", "auto") == "system" or _GUARD in env:
        return None
    if loaded_allocator() != "system":
        return None
    lib = find_tcmalloc()
    return None if lib is None else preload_tcmalloc(env, lib)


def preload_tcmalloc(env: dict[str, str], lib: str | os.PathLike) -> dict[str, str]:
    """``env`` with ``lib`` prepended to ``LD_PRELOAD`` and the guard that stops fcnseg restarting itself again:
    a process started with it runs under tcmalloc whatever its parent had (the benchmarks compare allocators)."""
    preload = " ".join(p for p in (str(lib), env.get("LD_PRELOAD", "")) if p)
    return {**env, "LD_PRELOAD": preload, _GUARD: "1"}


def reexec_under_tcmalloc(argv: list[str]) -> None:
    """Replaces this process (same PID, so ``torchrun`` and signals see no difference) with
    ``python -m fcnseg.cli *argv`` under tcmalloc where ``tcmalloc_env`` allows it; returns otherwise.

    Raises:
        OSError: the interpreter could not be started again.
    """
    env = tcmalloc_env(dict(os.environ))
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fcnseg.cli", *argv], env)

"""What the CPU computes natively, read at run time (machines differ from one day to the next: never assume)."""

from __future__ import annotations

import platform
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """The CPU's model name (for benchmark and experiment records)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first CPU in ``/proc/cpuinfo`` (``avx2``, ``avx512f``, ``avx512_vnni``,
    ``avx512_bf16``, ``amx_bf16``, ``amx_int8``, ...); empty where that file is absent (not Linux)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith(("flags", "Features")):  # x86 / ARM
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it autocast is far slower."""
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    import torch

    try:  # no /proc/cpuinfo: ask PyTorch's own CPU probe
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False

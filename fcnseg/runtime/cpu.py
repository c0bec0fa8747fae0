"""What this CPU is and computes natively: its model name and feature flags (Linux ``/proc/cpuinfo``)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

CPUINFO = Path("/proc/cpuinfo")


def cpu_name() -> str:
    """The CPU's model name (for benchmark and experiment records), e.g. "Intel(R) Xeon(R) Platinum 8480+".

    Read from the first ``model name`` line of ``/proc/cpuinfo``; where there is none (not Linux, some ARM
    kernels), the platform's processor or machine name.
    """
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> frozenset[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (e.g. "avx2", "avx512_bf16", "amx_bf16"); empty
    where the file cannot be read or has no ``flags`` line (not Linux, ARM's ``Features``)."""
    try:
        for line in CPUINFO.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


# The flags that decide which kernels run fast (recorded with every benchmark result).
KEY_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")


def key_flags() -> dict[str, bool]:
    """Whether this CPU has each of ``KEY_FLAGS``, in that order (all False where ``cpu_flags`` is empty)."""
    flags = cpu_flags()
    return {f: f in flags for f in KEY_FLAGS}


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); without it autocast is far slower.

    Read from the CPU's flags (``cpu_flags``); where there are none (not Linux), PyTorch's own CPU probe.
    """
    flags = cpu_flags()
    if flags:
        return bool({"avx512_bf16", "amx_bf16"} & flags)
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:
        return False

"""``amp: auto`` on the CPU: compute in bf16 only where this machine, for this model and input, measures it faster.

Native bf16 (AVX512-BF16, AMX) makes some nets faster and others slower (reorders, ops without a bf16 kernel,
memory-bound layers), and the machines a user meets differ from day to day, so "auto" never assumes: it times
the job's own step both ways (``faster_autocast``) and keeps bf16 only when it wins by a margin.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cpu import cpu_has_fast_bf16

DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class AmpChoice:
    """What ``faster_autocast`` measured: the dtype kept (None: full precision) and the median time of one step
    in each (ms, keyed "fp32", "bf16"), or ``reason`` when nothing was timed."""

    dtype: torch.dtype | None
    ms: dict
    reason: str = ""

    @property
    def name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    def describe(self) -> str:
        """One line for logs, e.g. "bf16 (median step: fp32 804 ms, bf16 612 ms)"."""
        if not self.ms:
            return f"{self.name} ({self.reason})"
        times = ", ".join(f"{k} {v:.0f} ms" for k, v in self.ms.items())
        return f"{self.name} (median step: {times})"


def median_ms(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """The median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` untimed ones (ms)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def faster_autocast(step: Callable[[torch.dtype | None], object], device: torch.device, *, repeats: int = 3,
                    warmup: int = 1, margin: float = 1.1) -> AmpChoice:
    """Times ``step(dtype)`` (one forward, or forward and backward, under ``torch.autocast(dtype)``; None: fp32)
    in fp32 and bf16 on a CPU with native bf16, and keeps bf16 when fp32 takes at least ``margin`` times as long.

    On a CPU without native bf16 nothing is timed (emulated bf16 is tens of times slower): fp32. Other devices:
    returns None with a reason; CUDA's choice is ``resolve_amp``'s, not timed.
    """
    if device.type != "cpu":
        return AmpChoice(None, {}, f"not timed on {device.type}")
    if not cpu_has_fast_bf16():
        return AmpChoice(None, {}, "this CPU has no native bf16 (AVX512-BF16/AMX)")
    ms = {"fp32": median_ms(lambda: step(None), repeats, warmup),
          "bf16": median_ms(lambda: step(torch.bfloat16), repeats, warmup)}
    return AmpChoice(torch.bfloat16 if ms["fp32"] >= margin * ms["bf16"] else None, ms)


def dtype_from_name(name: str) -> torch.dtype | None:
    """"fp32" -> None, "bf16" -> torch.bfloat16, "fp16" -> torch.float16 (the names ``AmpChoice`` records).

    Raises:
        ValueError: another name.
    """
    for dtype, known in DTYPE_NAMES.items():
        if known == name:
            return dtype
    raise ValueError(f"unknown autocast dtype {name!r}; expected one of {', '.join(DTYPE_NAMES.values())}")

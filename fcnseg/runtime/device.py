"""The device a job runs on and the autocast dtype it computes in."""

from __future__ import annotations

import os
import warnings

import torch

from .cpu import cpu_has_fast_bf16


def resolve_device(device: str) -> torch.device:
    """"auto" -> CUDA where available, else CPU; a bare "cuda" under ``torchrun`` -> this process's GPU
    (``LOCAL_RANK``). A CUDA device is made the current one.

    Raises:
        RuntimeError: ``device`` is not a device string torch knows ("cpu", "cuda", "cuda:1", ...), or names a
            CUDA device that this machine does not have.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1 else torch.cuda.current_device())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` ("off", "auto", "bf16", "fp16") on ``device`` (None: full precision).

    "auto" picks bf16 (or fp16 without bf16) on CUDA and full precision on the CPU, where bf16 is a win only
    for some nets even on CPUs that compute it natively: jobs that can time their own step then choose
    with ``fcnseg.runtime.amp.faster_autocast`` (training, ``fcnseg evaluate --amp auto``). bf16 asked for on a
    CPU without native bf16 falls back to fp32 with a warning (it would be 40-180x slower); fp16 autocast is CUDA-only.
    """
    if amp == "off":
        return None
    if device.type == "cuda":
        if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
            return torch.float16
        return torch.bfloat16
    if amp == "bf16":
        if cpu_has_fast_bf16():
            return torch.bfloat16
        warnings.warn("this CPU has no native bf16 (AVX512-BF16/AMX): training in fp32 instead", stacklevel=2)
    elif amp == "fp16":
        warnings.warn("fp16 autocast needs CUDA: training in fp32 instead", stacklevel=2)
    return None

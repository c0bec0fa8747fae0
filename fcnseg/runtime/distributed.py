"""Joining and leaving the process group that ``torchrun`` sets up (one process per device, any number of nodes)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .device import resolve_device


def setup_distributed(device: str) -> tuple[int, int, torch.device]:
    """Joins the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1); returns (rank, world size,
    device). Outside torchrun: (0, 1, the resolved device).

    The group's backend is NCCL on CUDA and gloo on the CPU; its timeout is ``FCNSEG_DIST_TIMEOUT`` seconds
    (default 600), the longest a process waits for a peer that died.

    Raises:
        RuntimeError: ``device`` is not a valid device (see ``resolve_device``), or the group could not be
            formed (a peer unreachable within the timeout: ``torch.distributed.DistError``, a RuntimeError).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world > 1 and not dist.is_initialized():
        # A bounded wait: if one process dies outside torchrun (which would end the others), the rest fail
        # after this long instead of gloo's 30 minutes. Rank 0 alone writes checkpoints and reports meanwhile.
        timeout = datetime.timedelta(seconds=float(os.environ.get("FCNSEG_DIST_TIMEOUT", "600")))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        if restart != "0":
            # After `torchrun --max-restarts` restarts the workers they share the agent's store with the failed
            # attempt, whose keys (the dead processes' addresses) would be read again: gloo then connects to a
            # closed port and hangs or fails. A prefix per attempt gives each attempt its own keys.
            from torch.distributed.rendezvous import rendezvous

            store, rank, size = next(rendezvous("env://", timeout=timeout))
            store = dist.PrefixStore(f"fcnseg/attempt{restart}", store)
            dist.init_process_group(backend, store=store, rank=rank, world_size=size, timeout=timeout)
        else:
            dist.init_process_group(backend, timeout=timeout)
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, dev


def finish_distributed() -> None:
    """Waits for every process, then leaves the group: a process that exits while gloo's threads still run
    aborts ("terminate called without an active exception"). Does nothing outside a process group."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()

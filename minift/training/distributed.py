"""Data parallelism with torch.distributed, launched by torchrun (gloo on CPU, NCCL on CUDA).

Every rank holds a full copy of the model and trains on its own rows of each global batch;
DistributedDataParallel averages the gradients across ranks during backward (Li et al. 2020,
"PyTorch Distributed"), so after each step all copies are equal again. Outside torchrun every
function here is the trivial single-process version, so the training loop has one code path.
"""

from __future__ import annotations

import atexit
import contextlib
import os

import torch
import torch.distributed as td
from torch.nn.parallel import DistributedDataParallel


def setup() -> None:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ...); a no-op otherwise."""
    if td.is_available() and not td.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        td.init_process_group(backend="nccl" if cuda else "gloo")
        # leave the group when the process ends: a rank that exits inside it can abort in gloo's threads
        # ("terminate called without an active exception"), failing a run that had finished
        atexit.register(_leave)


def _leave() -> None:
    if td.is_initialized():
        td.destroy_process_group()


def active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if active() else 0


def world_size() -> int:
    return td.get_world_size() if active() else 1


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The module, wrapped in DDP when several ranks train together."""
    if world_size() == 1:
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def no_sync_unless(module: torch.nn.Module, last: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a step (it would be wasted)."""
    if isinstance(module, DistributedDataParallel) and not last:
        return module.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(value: float | int) -> float | int:
    """The sum of a number over all ranks."""
    if not active():
        return value
    t = torch.tensor(float(value), dtype=torch.float64, device="cuda" if td.get_backend() == "nccl" else "cpu")
    td.all_reduce(t)
    return type(value)(t.item())


def all_gather_object(obj) -> list:
    """One object from each rank, in rank order, on every rank."""
    if not active():
        return [obj]
    out = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if active():
        td.barrier()

"""Reductions over the DDP processes that queue their work and return. Lightning's
`strategy.reduce` passes a barrier first (lightning.fabric's `_sync_ddp`), and under NCCL a
barrier makes the host wait for the GPU; an all_reduce is queued on the stream like a kernel."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from pipeline.host_reads import HostRead, to_host


def mean_over_processes(t: Tensor) -> Tensor:
    """`t` averaged over the processes, in place, as Lightning's reduce averages it (the backend's
    AVG; gloo, which has none, a sum divided by the number of processes), without its barrier;
    `t` as it is where no process group runs or it has one process."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    if dist.get_backend() == "gloo":
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.div_(dist.get_world_size())
    dist.all_reduce(t, op=dist.ReduceOp.AVG)
    return t


def max_over_processes_queued(value: int, device: torch.device) -> HostRead:
    """The largest of the processes' `value`s, by an all_reduce queued on `device` without a
    barrier (every process calls it at the same point), copied to pinned host memory without a
    wait on CUDA."""
    t = torch.full((), value, dtype=torch.int64, device=device)  # a fill: no copy to the device
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return to_host(t)


def rank_zeros_queued(value: int, device: torch.device) -> HostRead:
    """Rank 0's `value` on every process, by a broadcast queued on `device` (Lightning's
    `strategy.broadcast` pickles an object: under NCCL its sizes are read back to the host, a
    wait for the GPU), copied to pinned host memory without a wait on CUDA."""
    t = torch.full((), value, dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return to_host(t)

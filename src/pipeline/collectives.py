"""Reductions over the DDP processes that queue their work and return. Lightning's
`strategy.reduce` passes a barrier first (lightning.fabric's `_sync_ddp`), and under NCCL a
barrier makes the host wait for the GPU; an all_reduce is queued on the stream like a kernel."""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


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

"""Memory figures the bench reports: each variant's peak, and the soak's resident memory."""

from __future__ import annotations

import os

import torch


def resident_mb() -> float:
    """This process's resident memory now (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_mb(device: torch.device) -> float:
    """What a variant's round held: on CUDA the allocator's peak held by tensors since its
    counters were last reset; on a CPU the resident memory now (sampled at each round's end)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resident_mb()

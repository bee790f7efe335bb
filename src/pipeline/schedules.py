"""Learning-rate schedules as pure functions of the optimizer step, wrapped in LambdaLR.

Each returns the factor that multiplies optimizer.lr at a step (0-based). Warmup ramps
linearly from 1/(warmup_steps+1) to 1 so that the very first step already moves.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup: (step + 1) / (warmup_steps + 1) during warmup, 1 after."""
    return min(1.0, (step + 1) / (warmup_steps + 1))


def cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Warmup, then cosine from 1 down to min_lr_ratio at total_steps; flat after."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def step_factor(step: int, *, warmup_steps: int, step_size: int, gamma: float) -> float:
    """Warmup, then gamma ** (steps since warmup // step_size)."""
    if step < warmup_steps:
        return warmup_factor(step, warmup_steps)
    return float(gamma ** ((step - warmup_steps) // step_size))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    warmup_steps: int = 0,
    total_steps: int = 0,
    min_lr_ratio: float = 0.0,
    step_size: int = 1,
    gamma: float = 1.0,
) -> LambdaLR | None:
    """The scheduler named by the `scheduler=` group, stepped once per optimizer step; None for 'none'."""
    if name == "none":
        return None
    if name == "cosine":
        return LambdaLR(
            optimizer,
            lambda s: cosine_factor(
                s, warmup_steps=warmup_steps, total_steps=total_steps, min_lr_ratio=min_lr_ratio
            ),
        )
    if name == "step":
        return LambdaLR(
            optimizer,
            lambda s: step_factor(s, warmup_steps=warmup_steps, step_size=step_size, gamma=gamma),
        )
    raise ValueError(f"unknown scheduler {name!r}")  # config.validate rules this out first

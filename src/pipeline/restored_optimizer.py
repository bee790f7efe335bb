"""A run continued from a checkpoint (resume=, ckpt_path=) trains with its config's optimizer
hyperparameters, not the checkpoint's.

Lightning restores an optimizer's param groups whole from the checkpoint (lr, momentum, betas,
weight_decay, …) and a LambdaLR's base_lrs, so `resume=<run> optimizer.lr=1e-4` used to train on
at the old lr while config.yaml said 1e-4. The optimizer's `defaults` are not restored: they hold
what the config built it with. Where a group differs from them, the config wins; the optimizer's
state (momentum buffers, Adam's moments and step counts) carries on. With nothing changed nothing
is touched, so a plain resume stays bitwise the run that would have happened.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

Change = tuple[str, Any, Any]  # (hyperparameter, the checkpoint's value, the config's)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):  # capturable optimizers' lr
        return bool(torch.as_tensor(a).eq(torch.as_tensor(b)).all())
    return bool(a == b)


def apply_config_hyperparameters(
    optimizer: torch.optim.Optimizer, scheduler: LambdaLR | None
) -> list[Change]:
    """After Lightning restored `optimizer` (and `scheduler`) from a checkpoint: set every param
    group's hyperparameters to the optimizer's `defaults` (the config's) where they differ, and
    return what changed, one entry a hyperparameter. The lr under a LambdaLR schedule: its base
    (group 'initial_lr', the scheduler's base_lrs) becomes the config's, and the current lr the
    config's schedule's factor at its step times it, as the schedule would have made it."""
    changes: dict[str, Change] = {}
    for i, group in enumerate(optimizer.param_groups):
        for key, wanted in optimizer.defaults.items():
            if key == "lr" or key not in group or _same(group[key], wanted):
                continue
            changes.setdefault(key, (key, group[key], wanted))
            group[key] = wanted
        wanted_lr = optimizer.defaults["lr"]
        if scheduler is None:
            if not _same(group["lr"], wanted_lr):
                changes.setdefault("lr", ("lr", group["lr"], wanted_lr))
                group["lr"] = wanted_lr
            continue
        base = scheduler.base_lrs[i]
        if not _same(base, wanted_lr):
            changes.setdefault("lr", ("lr", base, wanted_lr))
            group["initial_lr"] = scheduler.base_lrs[i] = wanted_lr
        # The config's schedule at its step, as LambdaLR computes it: unchanged, the same bits; a
        # schedule changed on the command line (scheduler.total_steps, which follows
        # trainer.max_steps) takes effect from the first step, not one step late.
        now = wanted_lr * scheduler.lr_lambdas[i](scheduler.last_epoch)
        if not _same(group["lr"], now):
            group["lr"] = now
    if scheduler is not None:
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return list(changes.values())


def changes_message(changes: list[Change]) -> str:
    """One line for the run's log: what the config changed in the restored optimizer."""
    said = ", ".join(
        f"optimizer.{key}={new} (the checkpoint had {old})" for key, old, new in changes
    )
    return (
        f"continuing with the config's {said}; the optimizer's state (momentum, moments, step "
        "counts) carries on from the checkpoint"
    )

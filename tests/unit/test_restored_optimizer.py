"""A run continued from a checkpoint trains with the config's optimizer hyperparameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from pipeline.restored_optimizer import apply_config_hyperparameters, changes_message
from pipeline.schedules import build_scheduler, cosine_factor

Factory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SCHEDULE: dict[str, Any] = {"warmup_steps": 2, "total_steps": 10, "min_lr_ratio": 0.0}


def _factor(step: int) -> float:
    return cosine_factor(step, **SCHEDULE)


def _schedule(optimizer: torch.optim.Optimizer) -> LambdaLR:
    scheduler = build_scheduler(optimizer, name="cosine", **SCHEDULE)
    assert scheduler is not None
    return scheduler


def _trained(make: Factory, schedule: bool) -> tuple[nn.Module, dict, dict | None]:
    """A model trained 4 steps, and its optimizer's and scheduler's state dicts."""
    torch.manual_seed(0)
    net = nn.Linear(3, 2)
    optimizer = make(net.parameters())
    scheduler = _schedule(optimizer) if schedule else None
    for _ in range(4):
        net(torch.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        if scheduler is not None:
            scheduler.step()
    return net, optimizer.state_dict(), scheduler.state_dict() if scheduler else None


def _restored(
    net: nn.Module, make: Factory, saved: dict, saved_scheduler: dict | None
) -> tuple[torch.optim.Optimizer, LambdaLR | None]:
    """What Lightning does on resume: build from the config, then load the checkpoint's state."""
    optimizer = make(net.parameters())
    scheduler = _schedule(optimizer) if saved_scheduler is not None else None
    optimizer.load_state_dict(saved)
    if scheduler is not None and saved_scheduler is not None:
        scheduler.load_state_dict(saved_scheduler)
    return optimizer, scheduler


def test_the_configs_lr_and_momentum_replace_the_checkpoints_and_the_state_carries_on() -> None:
    old = partial(torch.optim.SGD, lr=1e-3, momentum=0.9)
    net, saved, saved_scheduler = _trained(old, schedule=True)
    new = partial(torch.optim.SGD, lr=1e-2, momentum=0.5)
    optimizer, scheduler = _restored(net, new, saved, saved_scheduler)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * _factor(4))  # Lightning's
    changes = apply_config_hyperparameters(optimizer, scheduler)
    assert sorted(changes) == [("lr", 1e-3, 1e-2), ("momentum", 0.9, 0.5)]
    group = optimizer.param_groups[0]
    assert group["momentum"] == 0.5 and group["initial_lr"] == 1e-2
    assert group["lr"] == 1e-2 * _factor(4)  # the schedule's factor at its step, on the new base
    assert scheduler is not None and scheduler.get_last_lr() == [group["lr"]]
    scheduler.step()
    assert group["lr"] == pytest.approx(1e-2 * _factor(5))
    kept = [optimizer.state[p]["momentum_buffer"] for p in net.parameters()]
    assert all(
        torch.equal(k, s["momentum_buffer"])
        for k, s in zip(kept, saved["state"].values(), strict=True)
    )
    assert "optimizer.lr=0.01 (the checkpoint had 0.001)" in changes_message(changes)


def test_without_a_schedule_the_lr_and_betas_are_the_configs() -> None:
    old = partial(torch.optim.AdamW, lr=1e-3, betas=(0.9, 0.999))
    net, saved, _ = _trained(old, schedule=False)
    new = partial(torch.optim.AdamW, lr=3e-4, betas=(0.8, 0.99))
    optimizer, _ = _restored(net, new, saved, None)
    changes = apply_config_hyperparameters(optimizer, None)
    assert sorted(changes) == [("betas", (0.9, 0.999), (0.8, 0.99)), ("lr", 1e-3, 3e-4)]
    assert optimizer.param_groups[0]["lr"] == 3e-4
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.99)


@pytest.mark.parametrize("schedule", [True, False])
def test_the_same_config_changes_nothing(schedule: bool) -> None:
    same = partial(torch.optim.SGD, lr=1e-3, momentum=0.9)
    net, saved, saved_scheduler = _trained(same, schedule)
    optimizer, scheduler = _restored(net, same, saved, saved_scheduler)
    assert apply_config_hyperparameters(optimizer, scheduler) == []
    assert optimizer.state_dict()["param_groups"] == saved["param_groups"]
    if scheduler is not None:
        assert scheduler.state_dict() == saved_scheduler


def test_a_schedule_changed_on_the_command_line_sets_the_lr_of_the_first_step() -> None:
    """resume=<run> trainer.max_steps=<more> stretches a cosine (scheduler.total_steps follows
    max_steps): the first resumed step took the old schedule's lr (0 at its end)."""
    sgd = partial(torch.optim.SGD, lr=1e-3, momentum=0.9)
    net, saved, saved_scheduler = _trained(sgd, schedule=True)
    optimizer = sgd(net.parameters())
    longer = {**SCHEDULE, "total_steps": 40}
    scheduler = build_scheduler(optimizer, name="cosine", **longer)
    optimizer.load_state_dict(saved)
    assert scheduler is not None and saved_scheduler is not None
    scheduler.load_state_dict(saved_scheduler)
    assert apply_config_hyperparameters(optimizer, scheduler) == []  # no optimizer setting changed
    assert optimizer.param_groups[0]["lr"] == 1e-3 * cosine_factor(4, **longer)
    assert scheduler.get_last_lr() == [optimizer.param_groups[0]["lr"]]

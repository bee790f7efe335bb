"""Learning-rate schedules: warmup, cosine and step factors by hand, and through LambdaLR."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.schedules import build_scheduler, cosine_factor, step_factor


def test_cosine_warms_up_then_decays_to_the_floor() -> None:
    kw = {"warmup_steps": 4, "total_steps": 14, "min_lr_ratio": 0.1}
    assert [cosine_factor(s, **kw) for s in range(4)] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert cosine_factor(4, **kw) == pytest.approx(1.0)
    assert cosine_factor(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert cosine_factor(14, **kw) == pytest.approx(0.1)
    assert cosine_factor(100, **kw) == pytest.approx(0.1)


def test_step_decays_every_step_size() -> None:
    factors = [step_factor(s, warmup_steps=0, step_size=3, gamma=0.5) for s in range(7)]
    assert factors == [1, 1, 1, 0.5, 0.5, 0.5, 0.25]


def test_scheduler_drives_the_optimizer_lr() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.2)
    sched = build_scheduler(opt, name="step", warmup_steps=0, step_size=2, gamma=0.1)
    assert sched is not None
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.2, 0.2, 0.02, 0.02, 0.002])
    assert build_scheduler(opt, name="none") is None

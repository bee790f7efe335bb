"""The gradient norms the non-finite guard and the gradient logger share: one pass a step."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.build import build_callbacks
from pipeline.callbacks import GradientLogger, NonFiniteGuard, StepGradNorms
from pipeline.cli import compose


def test_norms_are_computed_once_until_forgotten() -> None:
    shared = StepGradNorms()
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([float("inf")])]
    first = shared.of(grads)
    assert first.tolist() == [5.0, float("inf")]
    assert shared.of([torch.zeros(2), torch.zeros(1)]) is first  # the step's, not recomputed
    shared.forget()
    assert shared.of([torch.zeros(2), torch.zeros(1)]).tolist() == [0.0, 0.0]


def test_the_run_s_guard_and_logger_share_one_instance(tmp_path: Path) -> None:
    callbacks = build_callbacks(compose("train", ["device=cpu"]), tmp_path)
    (guard,) = [c for c in callbacks if isinstance(c, NonFiniteGuard)]
    (logger,) = [c for c in callbacks if isinstance(c, GradientLogger)]
    assert guard._grad_norms is logger._grad_norms

"""The live analytic check on a real Trainer: it passes on honest gradients and catches planted ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from helpers import TINY, Recorder
from pipeline import build
from pipeline.cli import compose
from pipeline.errors import GradientCheckError
from pipeline.gradients import TOLERANCES


class CorruptFcBiasGrad(pl.Callback):
    """A planted fault: nudges one entry of fc.bias.grad before the check reads it."""

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        pl_module.net.fc.bias.grad[3] += 0.5  # type: ignore[index, union-attr]


def _fit(tmp_path: Path, *overrides: str, corrupt: bool) -> Recorder:
    """A tiny run checked at every step; returns what the check logged."""
    cfg = compose(
        "train", [*TINY, "logger=none", "callbacks.gradient_check.every_n_steps=1", *overrides]
    )
    # The planted fault runs before the pipeline's callbacks, so before the check reads the gradients.
    trainer = build.build_trainer(
        cfg, tmp_path, extra_callbacks=[CorruptFcBiasGrad()] if corrupt else []
    )
    recorder = Recorder()
    trainer.loggers = [recorder]
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    return recorder


def test_honest_gradients_pass_within_the_tolerance(tmp_path: Path) -> None:
    logged = _fit(tmp_path, corrupt=False)
    # TINY: 2 steps, both checked; 32-true, so the head's matmul rounds to ~1e-7 of its size.
    for tag in ("gradcheck/fc_bias_max_err", "gradcheck/fc_weight_max_err"):
        errors = logged.tag(tag)
        assert [step for step, _ in errors] == [0, 1], tag
        assert all(0 <= err <= TOLERANCES["32-true"] for _, err in errors), (tag, errors)
    assert logged.tag("gradcheck/passed") == [(0, 1.0), (1, 1.0)]


def test_corrupted_gradient_raises_with_step_tensor_error_and_tolerance(tmp_path: Path) -> None:
    with pytest.raises(GradientCheckError) as info:
        _fit(tmp_path, corrupt=True)
    # Seed's loss, batch 4: every fc.bias.grad entry is exactly 4; one is 4.5 → relative error 0.125.
    assert str(info.value) == (
        "analytic gradient check failed at step 0 (rank 0): fc.bias.grad differs from the closed form "
        "for loss=sum_diff by max relative error 0.125 > tolerance 0.0001 (precision=32-true)"
    )


def test_on_fail_warn_warns_and_trains_on(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="analytic gradient check failed at step 0"):
        _fit(tmp_path, "callbacks.gradient_check.on_fail=warn", corrupt=True)


class HeadHooks(pl.Callback):
    """Each batch's forward hooks on the head, as its forward ran (read before the backward)."""

    def __init__(self) -> None:
        self.by_batch: list[int] = []

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any
    ) -> None:
        self.by_batch.append(len(pl_module.net.fc._forward_hooks))  # type: ignore[union-attr]


def test_the_head_is_hooked_only_for_the_batches_of_a_checked_step(tmp_path: Path) -> None:
    """A module with a forward hook takes torch's slower call path on every forward: the check
    hooks the head for a checked step's batches alone, and still checks the whole window."""
    cfg = compose("train", [*TINY, "logger=none", "trainer.max_steps=4", "data.num_samples=32",
                            "trainer.accumulate_grad_batches=2",
                            "callbacks.gradient_check.every_n_steps=2"])  # fmt: skip
    hooks, recorder = HeadHooks(), Recorder()
    trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=[hooks])
    trainer.loggers = [recorder]
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    # Steps 0 (the first), 1 and 3 (every 2: steps N−1, 2N−1) are checked, two batches each.
    assert hooks.by_batch == [1, 1, 1, 1, 0, 0, 1, 1]
    assert [step for step, _ in recorder.tag("gradcheck/passed")] == [0, 1, 3]
    assert all(passed == 1.0 for _, passed in recorder.tag("gradcheck/passed"))
    assert not trainer.lightning_module.net.fc._forward_hooks  # type: ignore[union-attr]

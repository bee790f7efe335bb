"""train/loss on a real Trainer: the loss of the step's whole accumulation window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from torch import Tensor

from helpers import TINY, Recorder
from pipeline import build
from pipeline.cli import compose


class MicroBatchLosses(pl.Callback):
    """Each micro-batch's loss as Lightning backpropagates it (divided by the window's size)."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_before_backward(self, trainer: pl.Trainer, pl_module: Any, loss: Tensor) -> None:
        self.losses.append(float(loss))


def test_under_accumulation_train_loss_is_the_windows_mean(tmp_path: Path) -> None:
    """Two micro-batches a step: train/loss was the second micro-batch's alone (review), where
    the step's gradient is the mean of both."""
    cfg = compose("train", [*TINY, "loss=mse", "logger=none", "data.num_samples=16",
                            "trainer.accumulate_grad_batches=2", "trainer.max_steps=2"])  # fmt: skip
    probe, recorder = MicroBatchLosses(), Recorder()
    trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=[probe])
    trainer.loggers = [recorder]
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    windows = [probe.losses[0] + probe.losses[1], probe.losses[2] + probe.losses[3]]
    assert len(probe.losses) == 4 and abs(probe.losses[0] - probe.losses[1]) > 1e-4
    assert recorder.tag("train/loss") == [(0, pytest.approx(windows[0], rel=1e-6)),
                                          (1, pytest.approx(windows[1], rel=1e-6))]  # fmt: skip

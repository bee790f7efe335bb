"""Writes the run's step scalars (pipeline.step_scalars) to the loggers: a step's at the next
step's start once the device has them, all that are left before validation, at an epoch's end
(the progress bar's line for the epoch shows its last logged loss), at the end of the fit and
when it fails. Rank 0's: the other ranks add none."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl

from pipeline import step_scalars
from pipeline.loggers import log_scalars


class StepScalarWriter(pl.Callback):
    def __init__(self) -> None:
        self._queue: step_scalars.StepScalars | None = None
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        self._queue = step_scalars.register(trainer)

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        assert self._trainer is not None
        log_scalars(self._trainer.loggers, scalars, step)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._queue:  # empty on every rank but 0, and between logging steps
            self._queue.write_ready(self._write)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_all()  # val/loss, which Lightning writes at validation's end, after them

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_all()  # the epoch's last logged step, for the bar's line of the epoch

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_all()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """What the steps before the failure measured, before the loggers close; best effort:
        the run's own error is the one to report (a failed device fails the wait too, and a
        logger that cannot write has raised its error once already)."""
        try:
            self._write_all()
        except Exception:
            self._queue = None  # nothing more is written (teardown, which follows, included)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._write_all()
        step_scalars.forget(trainer)
        self._queue, self._trainer = None, None

    def _write_all(self) -> None:
        if self._queue:
            self._queue.write_all(self._write)

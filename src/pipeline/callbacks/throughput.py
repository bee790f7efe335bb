"""perf/images_per_sec: training images per second, all ranks together, data loading included."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


def images_per_sec(batch_size: int, world_size: int, seconds: float) -> float:
    """Global throughput of one step: every rank processes batch_size images in lockstep."""
    return batch_size * world_size / seconds if seconds > 0 else 0.0


class Throughput(pl.Callback):
    """Times each training batch end to end (data wait included); logs on logged steps.

    DDP keeps ranks in lockstep, so rank 0's step time is the global step time.
    Costs two clock reads a step.
    """

    def __init__(self) -> None:
        self._last: float | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last is None:  # first batch: no previous end to measure from
            self._last = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        now = time.perf_counter()
        assert self._last is not None  # set by on_train_batch_start
        rate = images_per_sec(len(batch[0]), trainer.world_size, now - self._last)
        self._last = now
        pl_module.log("perf/images_per_sec", rate, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # validation time is not training throughput

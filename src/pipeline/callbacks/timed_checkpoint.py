"""last.ckpt again once N minutes of training have passed since the last save, whatever the
epoch length: a kill (even SIGKILL) never loses more than that (callbacks.checkpoint.every_n_minutes).

Checked after optimizer steps only (never inside an accumulation window). One process reads
its clock every step; under DDP rank 0's clock decides, broadcast every DDP_CHECK_EVERY steps
(a collective a step would cost, as GracefulStop found), queued without a wait for the GPU and
read at the next check (unless a save came between), so the interval can stretch by up to twice
that many steps. Lightning's ModelCheckpoint(train_time_interval=…) broadcasts on every step.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from pipeline.callbacks.graceful_stop import DDP_CHECK_EVERY
from pipeline.collectives import rank_zeros_queued
from pipeline.host_reads import HostRead
from pipeline.logging_steps import is_due


class TimedCheckpoint(pl.Callback):
    def __init__(self, *, checkpoint_path: Path, every_n_minutes: float) -> None:
        self.checkpoint_path = checkpoint_path
        self.every_s = every_n_minutes * 60
        self._last_save = time.monotonic()
        self._last_step = -1
        self._queued: HostRead | None = None  # under DDP, the last check's broadcast, unread
        self._saved_since_check = False  # under DDP, on every rank alike (saves are collective)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_save, self._last_step = time.monotonic(), trainer.global_step
        self._queued, self._saved_since_check = None, False

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._last_save = time.monotonic()  # any save (epoch end, every N steps) restarts the clock
        self._saved_since_check = True

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == self._last_step:  # inside an accumulation window: no optimizer step yet
            return
        self._last_step = step
        if trainer.world_size > 1 and not is_due(step - 1, DDP_CHECK_EVERY):
            return
        due = time.monotonic() - self._last_save >= self.every_s
        if trainer.world_size > 1:  # rank 0's clock at the last check, for every rank
            queued = rank_zeros_queued(int(due), trainer.strategy.root_device)
            earlier, self._queued = self._queued, queued  # read next check: no wait for the GPU
            saved, self._saved_since_check = self._saved_since_check, False
            due = earlier is not None and bool(earlier.read()) and not saved
        if due:
            trainer.save_checkpoint(self.checkpoint_path)

"""The rich progress bar: labelled by epoch without Lightning's "Epoch 0/-2" for step-bounded
runs, showing train/loss without a host read of it on every step, and redrawn at most
REDRAW_PER_SECOND times a second, not on every batch, by a thread that wakes as often."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from torch import Tensor

from pipeline import step_scalars
from pipeline.logging_steps import training_is_done
from pipeline.model import TRAIN_LOSS, logged_metric

SHOWN = TRAIN_LOSS
# A redraw of the bar and its metrics costs ~0.3 ms of the host's time here (Lightning draws
# twice a batch): a few % of a small GPU step. Four a second is what rich's Live does. Lightning's
# bar renders in a thread of its own that wakes refresh_rate times a second (100 by default)
# and takes the GIL from the training loop each time, to draw or only to find nothing to draw:
# at REDRAW_PER_SECOND, ~29 µs a step fewer in the zero-cost loop here (docs/benchmarks.md).
REDRAW_PER_SECOND = 4


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar. train/loss is not a progress-bar metric in Lightning's
    sense: Lightning reads every such value back to the host on every batch (on a GPU, a wait
    for the step's work). This bar shows the last value written to the loggers (pipeline.
    step_scalars, read from the device without a wait); with no logger, the module's last
    logged value (model.logged_metric), read again only when it is a new one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("refresh_rate", REDRAW_PER_SECOND)  # its thread's wake-ups a second
        super().__init__(*args, **kwargs)
        self._shown: Tensor | None = None
        self._value = 0.0
        self._drawn_at = -float("inf")  # time.monotonic() of the last redraw of the train bar
        self._undrawn: int | None = None  # batches done that the train bar does not show yet
        self._sized_epoch: int | None = None  # the epoch whose train bar total is set

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Redraws if 1 / REDRAW_PER_SECOND has passed since the last redraw; otherwise notes the
        count, which the next redraw (or the epoch's end, a validation's start, the fit's end)
        shows. Lightning's redraw sets the count, it does not add to it."""
        now = time.monotonic()
        if now - self._drawn_at < 1 / REDRAW_PER_SECOND:
            self._undrawn = batch_idx + 1
            return
        self._drawn_at, self._undrawn = now, None
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _catch_up(self) -> None:
        """Show the batches done, and the metrics logged, since the last redraw."""
        if self._undrawn is not None and self.train_progress_bar_id is not None:
            self._update_metrics(self.trainer, self.trainer.lightning_module)
            self._update(self.train_progress_bar_id, self._undrawn)
        self._undrawn = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._catch_up()
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._catch_up()
        super().on_validation_start(trainer, pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._catch_up()  # a run stopped between redraws (a signal, a pruned trial)
        super().teardown(trainer, pl_module, stage)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sized_epoch, self._undrawn = None, None  # a fit of its own
        super().on_train_start(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """At an epoch's first batch in this fit, the train bar's true total for a run bounded
        by steps: the epoch's batches before this one (a resume mid-epoch counts on from them)
        and the steps left, each accumulate_grad_batches batches. Lightning's counts the steps
        left as batches: "6/3" under accumulation, "8/3" after a resume mid-epoch."""
        if self._sized_epoch == trainer.current_epoch or self.is_disabled:
            return
        self._sized_epoch = trainer.current_epoch
        if self.train_progress_bar_id is None:  # resumed mid-epoch: Lightning adds it at the end
            self._initialize_train_progress_bar_id()
        bar = self.train_progress_bar_id
        if trainer.max_epochs == -1 and trainer.max_steps > 0 and self.progress and bar is not None:
            left = (trainer.max_steps - trainer.global_step) * trainer.accumulate_grad_batches
            total = min(trainer.num_training_batches, batch_idx + left)
            self.progress.update(bar, total=total)

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        queue = step_scalars.queue_of(trainer)
        if queue is not None and trainer.loggers and not training_is_done(trainer):
            if SHOWN in queue.last:
                items[SHOWN] = queue.last[SHOWN]  # as written: no read of the device
            return items  # none written yet (the first logging step's copy in flight): none shown
        # No logger (nothing is written), or the run's last step (kept, though not a logging
        # step): the module's value, read when new.
        logged = logged_metric(trainer, SHOWN)
        # A new value has new storage: the one shown is held, so its memory is not reused.
        if logged is not None and (
            self._shown is None or logged.data_ptr() != self._shown.data_ptr()
        ):
            self._shown, self._value = logged, float(logged)
        if self._shown is not None:
            items[SHOWN] = self._value
        return items

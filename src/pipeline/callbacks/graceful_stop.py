"""Ctrl-C (SIGINT) and SIGTERM stop a run between steps, after saving last.ckpt.

The handler only sets a flag; the step in flight finishes, the checkpoint is written at the
batch's end, and the Trainer stops normally (TensorBoard's writer closes cleanly). Under DDP the
flag is reduced over ranks every DDP_CHECK_EVERY steps (a collective on every step would cost),
queued without a wait for the GPU, and read at the next check, when it has long arrived: every
rank reads the same value at the same step, so one signalled process stops them all at the same
step, 8 to 16 steps after the signal. A second Ctrl-C raises KeyboardInterrupt at once. Under
gradient accumulation the stop waits for the window's last batch (a checkpoint mid-window would
lose the window's earlier batches on resume).
A signal that arrives during the run's last step, or after it (under DDP, after the last check
that can still act on it: within the last 8 to 16 steps), stops nothing: the run ends as it
would have (`received` is set, `stopped_at_step` not). A kept step file the stop's step is
scheduled for is saved first, then last.ckpt (whose callback state then lists it, so a resume
prunes it in turn); then the run's ModelCheckpoints learn that this step is saved, so the epoch's
end that the stop brings writes it neither again as last.ckpt nor as a step file off their
schedule (each a second ~90 MB write while a cluster's grace period runs out, and a file written
after last.ckpt one its resume never pruned).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from pipeline import early_signals
from pipeline.collectives import max_over_processes_queued
from pipeline.early_signals import STOP_SIGNALS
from pipeline.host_reads import HostRead
from pipeline.logging_steps import is_due, training_is_done

DDP_CHECK_EVERY = 8  # optimizer steps between the ranks' agreement on the flag


def graceful_stop_of(trainer: pl.Trainer) -> GracefulStop | None:
    """The Trainer's GracefulStop (build_trainer adds one to every run): after fit, whether and
    by which signal the run was stopped."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set by Lightning
    return next((c for c in callbacks if isinstance(c, GracefulStop)), None)


def writes(checkpoint: ModelCheckpoint, path: Path) -> bool:
    """Whether `checkpoint` saves to `path` (a fixed file name, as last.ckpt's)."""
    if checkpoint.dirpath is None or checkpoint.filename is None:
        return False
    return Path(checkpoint.dirpath) / f"{checkpoint.filename}{checkpoint.FILE_EXTENSION}" == path


class GracefulStop(pl.Callback):
    def __init__(self, *, checkpoint_path: Path) -> None:
        self.checkpoint_path = checkpoint_path
        self.received: int | None = None  # the signal that asked to stop
        self.stopped_at_step: int | None = None  # set only where the signal cut the run short
        self.forced = False  # a second Ctrl-C stopped the run at once, mid-step
        self._previous: dict[int, Any] = {}
        self._queued: HostRead | None = None  # under DDP, the last check's reduction, unread

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt  # asked twice: stop now
        self.received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._queued = None  # a fit of its own
        # A signal since the command's start (early_signals) stops the run after its first step.
        # Lightning's own SIGTERM handler, which ran too if it came during its setup, would end
        # the run at the epoch's end with an exception that exits 0: this stop is the one.
        if (early := early_signals.take()) is not None:
            self.received = early
            trainer._signal_connector.received_sigterm = False
        # After Lightning's own SIGTERM handler is registered, so this one replaces it.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if training_is_done(trainer):  # the same on every rank: no collective skipped by one
            return  # the run ends here anyway, and saves its own last checkpoint
        if trainer.fit_loop._should_accumulate():  # mid-window: a resume would lose its batches
            return  # stop after the window's last batch, its optimizer step
        if trainer.world_size > 1 and not is_due(trainer.global_step - 1, DDP_CHECK_EVERY):
            return
        signum = self._agreed_signal(trainer)
        if signum is None:
            return
        self.received = signum  # also on a rank the signal did not reach: it reports the stop
        step = trainer.global_step
        checkpoints = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)]
        for checkpoint in checkpoints:
            if is_due(step - 1, checkpoint._every_n_train_steps) and not writes(
                checkpoint, self.checkpoint_path
            ):  # a kept step file this step is scheduled for: before last.ckpt, which lists it
                checkpoint._save_topk_checkpoint(trainer, checkpoint._monitor_candidates(trainer))
        trainer.save_checkpoint(self.checkpoint_path)
        for checkpoint in checkpoints:  # each skips the step it saved last
            checkpoint._last_global_step_saved = step
        self.stopped_at_step = trainer.global_step
        trainer.should_stop = True

    def _agreed_signal(self, trainer: pl.Trainer, *, now: bool = False) -> int | None:
        """The signal any rank received (the highest number, if they differ), or None: under DDP
        one collective, so every rank stops, and knows why, at the same step. As the ranks said
        at the last check, whose reduction is read now, while this check's is queued (no wait
        for the GPU); `now`: as they say now (a wait, at the run's end)."""
        if trainer.world_size == 1:
            return self.received
        queued = max_over_processes_queued(self.received or 0, trainer.strategy.root_device)
        if now:
            return queued.read() or None
        earlier, self._queued = self._queued, queued
        return (earlier.read() or None) if earlier is not None else None

    def _restore(self) -> None:
        """Put back the handlers this callback replaced, where its own is still installed. Runs at
        train end, before Lightning's teardown restores the handlers it installed: restored
        after that, Lightning's handler would outlive its Trainer, keeping it (and the model)
        alive and answering SIGTERM for a finished run."""
        for s, handler in self._previous.items():
            if signal.getsignal(s) == self._handle:
                signal.signal(s, handler)
        self._previous = {}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1 and self.stopped_at_step is None:
            # A signal to one rank after the ranks' last check: every rank learns it (one more
            # collective, at an end every rank reaches), so rank 0 can say the run completed.
            self.received = self._agreed_signal(trainer, now=True)
        self._restore()
        early_signals.ended()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
        early_signals.ended()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()
        # Until the command's end, or a sweep's next job (Hydra composes it before its run
        # starts): a stop signal is recorded, and that job stops before it trains.
        early_signals.ended()

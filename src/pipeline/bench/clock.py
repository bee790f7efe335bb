"""The step clock: what a round of any loop measures, and how.

Steps are timed each from the end of the one before, after the warm-up steps; the device is
synchronized only at the two ends of the timed window, so on a GPU the host may run ahead as it
does in training. The plain loops call `StepClock.step_end` themselves; `StepTimer` calls it
from the Trainer's batch hooks, so every variant is timed the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch


@dataclass
class Timing:
    """What one variant's round measured."""

    steps: list[float]  # each timed step, end to end
    waits: list[float] = field(default_factory=list)  # of each timed step, the wait for its batch
    first_step_s: float | None = None  # batch start to end of the run's first step
    mean_step_s: float | None = None  # the timed window, synchronized at its ends, per step
    hook_s: dict[str, float] = field(default_factory=dict)  # a Trainer's: hook_clock.HookClock


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA, where nothing runs ahead)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced_points(warmup: int, total: int) -> tuple[int, int]:
    """The steps at whose end the device is synchronized: the one before the first timed step,
    and the last. Steps max(warmup, 1)…total−1 are timed, each from the end of the one before;
    between the two points the host may run ahead of the device, as in real training, so a
    round's mean step time is (end − start) / timed steps, not a sum of synced steps (a sync on
    every step would charge all host work, which a GPU otherwise hides, to the step)."""
    return max(warmup, 1) - 1, total - 1


class StepClock:
    """Step times, each from the end of the step before, after `warmup` steps; the device is
    synchronized only at the ends of the timed window (`synced_points`). The first step is
    timed apart, from `begin` (where compiling happens)."""

    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.sync_at = synced_points(warmup, total)
        self.steps: list[float] = []
        self.first_step_s: float | None = None
        self.mean_step_s: float | None = None
        self.end: float | None = None  # the last step's end
        self.begin = time.perf_counter()  # the first step's start
        self._window_start = 0.0
        self._seen = 0

    def step_end(self) -> bool:
        """Mark a step's end; whether that step was timed."""
        i = self._seen
        if i in self.sync_at:
            sync(self.device)
        now = time.perf_counter()
        timed = self.end is not None and self.warmup <= i < self.total  # none after the window
        if self.end is None:
            self.first_step_s = now - self.begin
        elif timed:
            self.steps.append(now - self.end)
        if i == self.sync_at[0]:
            self._window_start = now
        elif i == self.sync_at[1] and self.steps:
            self.mean_step_s = (now - self._window_start) / len(self.steps)
        self.end, self._seen = now, i + 1
        return timed

    def timing(self, waits: list[float] | None = None) -> Timing:
        """The round's figures."""
        return Timing(self.steps, waits or [], self.first_step_s, self.mean_step_s)


class StepTimer(pl.Callback):
    """A StepClock over the Trainer's batches (batch end to batch end), and the data waits of
    the timed steps: from the end of the batch's last on_train_batch_end (`end_mark`, which the
    Trainer gets after every other callback) to the next batch's start. What a callback does
    after the step (the gradient logger's update norms) is not a wait for data; the loop's own
    work between batches, the fetch and the making of the batch are. The Trainer gets the
    StepTimer before the pipeline's callbacks (extra_callbacks) and `end_mark` after them
    (without it, a wait is timed from the StepTimer's own batch end)."""

    def __init__(self, warmup_steps: int, total_steps: int, device: torch.device) -> None:
        self.clock = StepClock(warmup_steps, total_steps, device)
        self.waits: list[float] = []
        self.end_mark = BatchEndMark()
        self._start = 0.0

    @property
    def steps(self) -> list[float]:
        return self.clock.steps

    @property
    def first_step_s(self) -> float | None:
        return self.clock.first_step_s

    @property
    def mean_step_s(self) -> float | None:
        return self.clock.mean_step_s

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()
        if self.clock.end is None:
            self.clock.begin = self._start

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # The batch before's last batch-end hook; this one's own, where the Trainer has no mark.
        callbacks_done = self.end_mark.at if self.end_mark.at is not None else self.clock.end
        if self.clock.step_end():
            assert callbacks_done is not None  # a timed step follows another
            self.waits.append(self._start - callbacks_done)


class BatchEndMark(pl.Callback):
    """When the last on_train_batch_end hook of a batch ended (StepTimer.end_mark)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self.at = time.perf_counter()

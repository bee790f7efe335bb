"""Profiling a run from the config: `profiler=simple` (Lightning's SimpleProfiler: time per hook)
or `profiler=torch` (torch.profiler over a few scheduled optimizer steps: every operator, kernel
and allocation). Both write to <run>/profile/, from global rank 0 only.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.profilers import PassThroughProfiler, Profiler, SimpleProfiler
from lightning.pytorch.utilities import rank_zero_only
from torch.profiler import ProfilerActivity, profile, schedule

from pipeline import report
from pipeline.layout import MEMORY_SNAPSHOT_FILE, TOP_OPS_FILE, TRACE_FILE

log = logging.getLogger(__name__)

MEMORY_HISTORY_ENTRIES = 100_000  # allocation events kept for the snapshot (a ring buffer)


class RankZeroSimpleProfiler(SimpleProfiler):
    """Lightning's SimpleProfiler, whose report (profile/fit-simple*.txt) only global rank 0 writes."""

    @rank_zero_only
    def describe(self) -> None:
        super().describe()


_NOTHING = nullcontext()  # reusable: entering and leaving it does nothing


class NoProfiler(PassThroughProfiler):
    """Lightning's PassThroughProfiler without its cost: the Trainer enters `profile(...)` around
    every hook of every callback and of the module, ~145 times a step with the pipeline's
    callbacks, and the base class builds a generator-based context manager each time (~1.5 µs
    here). This one hands back one shared context that does nothing."""

    def profile(self, action_name: str) -> Any:  # the base's type is @contextmanager's
        return _NOTHING


def lightning_profiler(name: str, profile_dir: Path) -> Profiler:
    """The Trainer's `profiler` argument: SimpleProfiler for profiler=simple, else NoProfiler (the
    torch profiler is a callback, TorchProfile, so that it counts optimizer steps)."""
    if name == "simple":
        return RankZeroSimpleProfiler(dirpath=profile_dir, filename="simple")
    return NoProfiler()


def top_ops_table(prof: profile, *, cuda: bool, row_limit: int) -> str:
    """The operators that took the most time of their own (children excluded): device time on
    CUDA, CPU time elsewhere."""
    sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
    return str(prof.key_averages().table(sort_by=sort_by, row_limit=row_limit))


class TorchProfile(Callback):
    """torch.profiler over optimizer steps skip_first+1 … : `warmup` steps run it and are thrown
    away (its own start-up cost), the next `active` steps are recorded. Then it writes, to
    `profile_dir`: the trace (TRACE_FILE, one `ProfilerStep#N` marker per recorded step, N the
    optimizer step of this process counted from 0), the top operations (TOP_OPS_FILE, also printed
    at the end of training) and, on CUDA, a memory snapshot of the allocator's history.

    Costs: the skipped steps run at full speed; the recorded ones slower (more so on CUDA, where
    it also records memory and shapes). Only global rank 0 profiles.
    """

    def __init__(
        self,
        *,
        profile_dir: Path,
        skip_first: int,
        warmup: int,
        active: int,
        row_limit: int,
        cuda: bool,
    ) -> None:
        self.profile_dir = profile_dir
        self.steps = {"skip_first": skip_first, "warmup": warmup, "active": active}
        self.row_limit = row_limit
        self.cuda = cuda
        self._profiler: profile | None = None
        self._last_global_step = 0
        self._steps_done = 0
        self._table: str | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._last_global_step = trainer.global_step
        if self.cuda:
            # Python frames only: C++ frames are symbolized when the snapshot is dumped, minutes
            # for a run's allocations (and torch.compile's code has hung the unwinder).
            torch.cuda.memory._record_memory_history(
                max_entries=MEMORY_HISTORY_ENTRIES, stacks="python"
            )
        self._profiler = profile(
            activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if self.cuda else [])],
            schedule=schedule(wait=0, repeat=1, **self.steps),
            on_trace_ready=self._save,
            record_shapes=True,
            profile_memory=self.cuda,
        )
        self._profiler.start()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """A step of the profiler's schedule is an optimizer step (all its accumulated batches)."""
        if self._profiler is None or trainer.global_step == self._last_global_step:
            return
        self._last_global_step = trainer.global_step
        self._steps_done += 1
        self._profiler.step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._finish()

    def _save(self, prof: profile) -> None:
        """on_trace_ready: the recorded steps are complete."""
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(self.profile_dir / TRACE_FILE))
        self._table = top_ops_table(prof, cuda=self.cuda, row_limit=self.row_limit)
        (self.profile_dir / TOP_OPS_FILE).write_text(self._table + "\n")
        if self.cuda:
            torch.cuda.memory._dump_snapshot(str(self.profile_dir / MEMORY_SNAPSHOT_FILE))
            torch.cuda.memory._record_memory_history(enabled=None)

    def _finish(self) -> None:
        if self._profiler is None:
            return
        prof, self._profiler = self._profiler, None
        prof.stop()  # saves a partial trace if training ended while recording
        if self.cuda and self._table is None:
            torch.cuda.memory._record_memory_history(enabled=None)
        wanted = sum(self.steps.values())
        if self._steps_done < wanted:
            log.warning(
                "profiler=torch: training ended after %d optimizer step(s), before the schedule's %d "
                "(profiler.skip_first + warmup + active); the trace holds %s",
                self._steps_done,
                wanted,
                "fewer steps than profiler.active" if self._table else "nothing",
            )
        if self._table is not None:
            where = self.profile_dir / TOP_OPS_FILE
            report.show_line(f"[bold]Top operations[/] (also in {where}):")
            report.console.print(self._table, markup=False, highlight=False, soft_wrap=True)

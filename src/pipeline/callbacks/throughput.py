"""perf/images_per_sec: training images per second, all ranks together, data loading included;
perf/model_tflops_per_sec: the model's training arithmetic at that rate (model_tflops)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import lightning.pytorch as pl

from pipeline.loggers import log_step_scalars, step_logs_due

log = logging.getLogger(__name__)
FIRST_STEP_MESSAGE = "first training step began %.2f s after the process started"
FIRST_STEP_TOOK = "first training batch took %.2f s%s"
COMPILING = " (model.compile: compiling is part of it)"


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where unknown."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/stat") as system:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
            boot = next(int(line.split()[1]) for line in system if line.startswith("btime"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return time.time() - (boot + start_ticks / os.sysconf("SC_CLK_TCK"))


def images_per_sec(batch_size: int, world_size: int, seconds: float) -> float:
    """Global throughput of one step: every rank processes batch_size images in lockstep."""
    return batch_size * world_size / seconds if seconds > 0 else 0.0


def model_tflops(forward_flops_per_image: int, images_per_second: float) -> float:
    """TFLOP/s of training at `images_per_second`: a training step costs about 3 forward passes
    (the backward ~2: gradients for the inputs and for the weights), the usual estimate behind
    MFU. Divided by the devices' peak, it is the model FLOPs utilization."""
    return 3 * forward_flops_per_image * images_per_second / 1e12


class Throughput(pl.Callback):
    """Times each training batch end to end (data wait included); logs on logged steps.

    DDP keeps ranks in lockstep, so rank 0's step time is the global step time.
    Costs two clock reads a step, and a logger write on logging steps.
    """

    def __init__(self, *, compile: bool = False, forward_flops_per_image: int = 0) -> None:
        self.compile = compile  # the first batch's time then includes compiling
        self.forward_flops = forward_flops_per_image  # 0: no perf/model_tflops_per_sec
        self._last: float | None = None
        self._first_start: float | None = None
        self._started = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._last is None:  # first batch: no previous end to measure from
            self._last = time.perf_counter()
            if not self._started:
                self._first_start, self._started = self._last, True
            if trainer.global_step == 0 and batch_idx == 0 and (age := process_age_s()) is not None:
                log.info(FIRST_STEP_MESSAGE, age)

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
        seconds, self._last = now - self._last, now
        if self._first_start is not None:  # this process's first batch
            log.info(FIRST_STEP_TOOK, now - self._first_start, COMPILING if self.compile else "")
            self._first_start = None
        if not step_logs_due(trainer):  # the figures only on the steps that write them
            return
        rate = images_per_sec(len(batch[0]), trainer.world_size, seconds)
        metrics = {"perf/images_per_sec": rate}  # nothing else reads them
        if self.forward_flops:
            metrics["perf/model_tflops_per_sec"] = model_tflops(self.forward_flops, rate)
        log_step_scalars(trainer, metrics)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last = None  # validation time is not training throughput

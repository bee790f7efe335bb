"""perf/gpu_mem_*: the CUDA caching allocator's statistics on logging steps, from counters the
allocator keeps on the host (no device sync)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from pipeline.loggers import log_step_scalars
from pipeline.logging_steps import writes_step_logs

GB = 2**30
PEAK_TAG = "perf/gpu_mem_peak_gb"


def gpu_memory_figures(stats: Mapping[str, Any]) -> dict[str, float]:
    """torch.cuda.memory_stats() → the four perf/ tags: GB held by tensors now and at their peak
    (since the start, or since torch.cuda.reset_peak_memory_stats), GB the allocator reserved
    from the driver, and how often an allocation failed and was retried after freeing its cache
    (above 0: the run is at the card's limit). A counter the allocator has not made yet is 0."""
    return {
        "perf/gpu_mem_allocated_gb": stats.get("allocated_bytes.all.current", 0) / GB,
        PEAK_TAG: stats.get("allocated_bytes.all.peak", 0) / GB,
        "perf/gpu_mem_reserved_gb": stats.get("reserved_bytes.all.current", 0) / GB,
        "perf/gpu_alloc_retries": float(stats.get("num_alloc_retries", 0)),
    }


class GpuMemory(pl.Callback):
    """Writes gpu_memory_figures of rank 0's device where and when Lightning writes a step's
    logs (loggers.log_step_scalars: a logging step's last micro-batch, not each one under
    accumulation): no tensors, so no ~0.7 ms self.log call each and no copy to the device. CUDA
    runs only (build adds it). Costs a dict read on those steps."""

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if trainer.is_global_zero and writes_step_logs(trainer):
            log_step_scalars(trainer, gpu_memory_figures(torch.cuda.memory_stats(pl_module.device)))

"""bench.soak_steps > 0: one long run with the run's callbacks and logger, resident memory
sampled along the way, to see whether anything grows step after step."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from pipeline import build
from pipeline.bench.memory import resident_mb
from pipeline.bench.variants import merged
from pipeline.logging_steps import is_due


class MemorySampler(pl.Callback):
    """Resident memory (MB) after the first step and every `every` steps: (step, MB) pairs."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.samples: list[tuple[int, float]] = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == 1 or is_due(step - 1, self.every):  # global_step already counts this step
            self.samples.append((step, resident_mb()))


def run_soak(cfg: DictConfig, workdir: Path) -> dict[str, Any]:
    """One run of bench.soak_steps steps in `workdir`; resident memory every bench.soak_every
    steps, and its growth from the first of those samples (after warm-up) to the last."""
    sampler = MemorySampler(cfg.bench.soak_every)
    soak_cfg = merged(cfg, {"trainer": {"max_steps": cfg.bench.soak_steps}})
    pl.seed_everything(cfg.seed, verbose=False)
    trainer = build.build_trainer(soak_cfg, workdir, extra_callbacks=[sampler])
    started = time.perf_counter()
    trainer.fit(build.build_module(soak_cfg), datamodule=build.build_datamodule(soak_cfg))
    after_warmup = next(
        (mb for step, mb in sampler.samples if step >= cfg.bench.soak_every), sampler.samples[0][1]
    )
    return {
        "steps": trainer.global_step,
        "seconds": time.perf_counter() - started,
        "resident_mb": sampler.samples,
        "growth_after_first_sample_mb": sampler.samples[-1][1] - after_warmup,
    }

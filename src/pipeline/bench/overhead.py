"""bench.overhead_steps > 0: what the training loop itself costs a step, with a model whose
forward costs nothing (ZeroCostNet), so the difference between loops is host work alone.

Three loops around the same model, data path and optimizer, interleaved over bench.rounds:
`plain` (the hand-written loop), `lightning` (a Trainer with no callbacks, logger, checkpoint or
progress bar: Lightning's own loop) and `pipeline` (the run's Trainer, every callback and
logger); and the pipeline with no logging step in the window (QUIET), which splits its cost
into what every step pays and what the logging steps add. Figures: µs a step of each,
Lightning's cost over the plain loop, the pipeline's over Lightning, and each pipeline
callback's own hooks (hook_clock, in a fourth loop: the clock
costs the step ~1 µs a hook call, which the pipeline's own figure leaves out). Small images
keep the data path's share (the same in all loops) and its noise small: data.image_size=8.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig
from torch import Tensor, nn

from pipeline import build
from pipeline.bench.clock import StepTimer, Timing
from pipeline.bench.loops import time_plain_pytorch, time_trainer
from pipeline.bench.run import Variant, round_config, run_rounds
from pipeline.bench.variants import merged
from pipeline.gradients import BLOCKS
from pipeline.model import ResNetClassifier

# The pipeline's loop again, each callback's hooks timed (hook_clock): its hook figures only. The
# clock's wrapping costs ~1 µs a hook call, ~20 µs a step, so the pipeline's step is timed without.
HOOKS_TIMED = "pipeline, hooks timed"
# The pipeline's loop with no logging step in the timed window (no scalars, norms, update ratios,
# histograms or analytic check there): what every step pays, apart from what logging steps add.
QUIET = "pipeline, no logging step"


class ZeroCostNet(nn.Module):
    """ResNet18's top-level blocks by name (so every instrument finds its blocks), each a 1→1
    linear map of the image's mean: a forward and backward of a few dozen scalar operations."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.inner = list(BLOCKS[:-1])
        for name in self.inner:
            self.add_module(name, nn.Linear(1, 1))
        self.fc = nn.Linear(1, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        h = images.mean((1, 2, 3)).unsqueeze(1)  # (B, 1)
        for name in self.inner:
            h = self.get_submodule(name)(h)
        return self.fc(h)  # (B, num_classes)


def zero_cost_module(cfg: DictConfig) -> ResNetClassifier:
    """The run's module (loss, optimizer, scheduler, memory format) around a ZeroCostNet."""
    module = build.build_module(cfg)
    module.net = ZeroCostNet(cfg.model.num_classes)
    return module


def time_lightning(cfg: DictConfig, warmup: int, steps: int, workdir: Path) -> Timing:
    """One round of Lightning's own loop: the run's module and data, no callback of ours, no
    logger, checkpoint, progress bar or model summary."""
    pl.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer(warmup, warmup + steps, build.run_device(cfg))
    trainer = pl.Trainer(
        accelerator=cfg.device.accelerator, devices=1, precision=cfg.precision,
        max_steps=cfg.trainer.max_steps, log_every_n_steps=cfg.trainer.log_every_n_steps,
        callbacks=[timer, timer.end_mark], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
    )  # fmt: skip
    trainer.fit(zero_cost_module(cfg), datamodule=build.build_datamodule(cfg))
    return timer.clock.timing(timer.waits)


def paired_difference_us(a_s: list[float], b_s: list[float]) -> tuple[float, float | None]:
    """The mean over rounds of a's step time minus b's in the same round, in µs, and its standard
    error (None for one round): a figure that says how sure it is. Each round's runs vary by
    ±20–40% on this kind of machine, so a difference of medians of 5–9 rounds moved by ±300 µs
    from one bench to the next; many short rounds and this mean narrow it (Lightning against
    itself, 40 rounds of 100 steps: −119 ± 59 µs; docs/benchmarks.md)."""
    diffs = [(a - b) * 1e6 for a, b in zip(a_s, b_s, strict=True)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
    return statistics.mean(diffs), se


def overhead_figures(
    step_s: dict[str, list[float]], hook_s: dict[str, list[float]]
) -> dict[str, Any]:
    """From each loop's mean step time by round: medians in µs, the differences of medians, and
    the pipeline's difference from Lightning paired by round (`paired_difference_us`)."""
    us = {name: statistics.median(v) * 1e6 for name, v in step_s.items()}
    paired, se = paired_difference_us(step_s["pipeline"], step_s["lightning"])
    figures = {
        "us_per_step": us,
        "lightning_over_plain_us": us["lightning"] - us["plain"],
        "pipeline_over_lightning_us": us["pipeline"] - us["lightning"],
        "pipeline_over_lightning_paired_us": paired,
        "pipeline_over_lightning_paired_se_us": se,
        "hook_us_per_step": {k: statistics.median(v) * 1e6 for k, v in hook_s.items()},
        "per_round_step_us": {k: [s * 1e6 for s in v] for k, v in step_s.items()},
    }
    if QUIET in step_s:  # every step's share, and what the logging steps add to it, paired
        every, every_se = paired_difference_us(step_s[QUIET], step_s["lightning"])
        logging, logging_se = paired_difference_us(step_s["pipeline"], step_s[QUIET])
        figures |= {
            "every_step_over_lightning_paired_us": every,
            "every_step_over_lightning_paired_se_us": every_se,
            "logging_steps_paired_us": logging,
            "logging_steps_paired_se_us": logging_se,
        }
    return figures


def run_overhead(cfg: DictConfig) -> dict[str, Any]:
    """bench.rounds rounds of the three loops, bench.overhead_steps timed steps each."""
    warmup = cfg.bench.warmup_steps
    steps = cfg.bench.overhead_steps
    # Not compiled: model.compile compiles ResNet18's feature path, which ZeroCostNet has not.
    run_cfg = round_config(merged(cfg, {"bench": {"steps": steps}, "model": {"compile": False}}))
    device = build.run_device(run_cfg)
    quiet_cfg = merged(run_cfg, {  # the last step (untimed) logs, histograms never
        "trainer": {"log_every_n_steps": run_cfg.trainer.max_steps},
        "callbacks": {"gradients": {"histogram_every_n_steps": 0},
                      "gradient_check": {"every_n_steps": 0}},  # the first step's: warm-up
    })  # fmt: skip
    loops: dict[str, Variant] = {
        "plain": lambda _: time_plain_pytorch(
            run_cfg, device, warmup, steps, module=zero_cost_module
        ),
        "lightning": lambda workdir: time_lightning(run_cfg, warmup, steps, workdir),
        "pipeline": lambda workdir: time_trainer(
            run_cfg, warmup, steps, workdir, module=zero_cost_module, hook_clock=False
        ),
        HOOKS_TIMED: lambda workdir: time_trainer(
            run_cfg, warmup, steps, workdir, module=zero_cost_module
        ),
        QUIET: lambda workdir: time_trainer(
            quiet_cfg, warmup, steps, workdir, module=zero_cost_module, hook_clock=False
        ),
    }
    rounds = run_rounds(loops, cfg.bench.rounds, device)
    figures = overhead_figures(
        {name: r.step_s for name, r in rounds.items() if name != HOOKS_TIMED},
        rounds[HOOKS_TIMED].hook_s,
    )
    figures["hooks_timed_round_step_us"] = [t * 1e6 for t in rounds[HOOKS_TIMED].step_s]
    figures |= {"steps": steps, "rounds": cfg.bench.rounds, "device": str(device),
                "image_size": cfg.data.image_size, "batch_size": cfg.data.batch_size}  # fmt: skip
    return figures

"""What one bench command measures and prints: the soak (bench.soak_steps > 0), the loops' own
cost (bench.overhead_steps > 0), real runs timed from outside (bench.outside_rounds > 0), the
data path alone (bench.data_only), or else the interleaved benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from pipeline import build
from pipeline.bench.data_path import time_data
from pipeline.bench.loops import stop_on_signals
from pipeline.bench.outside import run_outside
from pipeline.bench.overhead import run_overhead
from pipeline.bench.run import run_benchmark
from pipeline.bench.show import show, show_data, show_outside, show_overhead, show_soak
from pipeline.bench.soak import run_soak


def measure(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """The mode's figures, printed. `run_dir`: the soak's run directory; `overrides`: the
    command's, for the start-up run. Raises DivergenceError when a timed run diverges,
    BenchStopped on SIGINT or SIGTERM, TimedProcessFailed when a process it times fails."""
    with stop_on_signals():  # a signal mid-measure: BenchStopped, no figures
        if cfg.bench.soak_steps > 0:
            figures = run_soak(cfg, run_dir)
            show_soak(figures, cfg.bench.soak_every)
        elif cfg.bench.overhead_steps > 0:
            figures = run_overhead(cfg)
            show_overhead(figures)
        elif cfg.bench.outside_rounds > 0:
            figures = run_outside(cfg, overrides)
            show_outside(figures)
        elif cfg.bench.data_only:
            figures = time_data(
                build.build_datamodule(cfg), build.run_device(cfg), cfg.bench.rounds
            )
            show_data(figures)
        else:
            figures = run_benchmark(cfg, overrides)
            show(figures)
    return figures

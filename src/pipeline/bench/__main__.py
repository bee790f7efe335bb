"""`python -m pipeline.bench` (and `pipeline-bench`): compose and validate every problem at once
(cli.run), then measure (modes.py), print, and write bench.output as JSON."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline import cli, report
from pipeline.bench.config import validate_bench
from pipeline.bench.loops import BenchStopped
from pipeline.bench.modes import measure
from pipeline.bench.outside import TimedProcessFailed
from pipeline.config_dir import CONFIG_DIR
from pipeline.errors import (
    DIVERGED_EXIT_CODE,
    PROCESS_FAILED_EXIT_CODE,
    DivergenceError,
    stopped_by_signal_exit_code,
)


@hydra.main(config_path=str(CONFIG_DIR), config_name="bench", version_base="1.3")
def bench(cfg: DictConfig) -> None:
    """One bench of a config that cli.run has validated."""
    report.route_lightning_logs_to_hydra()
    hydra_cfg = HydraConfig.get()
    try:
        figures = measure(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except DivergenceError as exc:
        report.show_error(
            "pipeline.bench",
            f"a timed run diverged, so its steps are not the same work ({exc}); "
            "bench with loss=mse, or a smaller data.batch_size",
        )
        sys.exit(DIVERGED_EXIT_CODE)
    except TimedProcessFailed as exc:
        report.show_error("pipeline.bench", f"{exc}; no figures made")
        sys.exit(PROCESS_FAILED_EXIT_CODE)
    except BenchStopped as exc:
        name = signal.Signals(exc.signum).name
        report.show_error(
            "pipeline.bench", f"stopped by {name} during a timed run; no figures made"
        )
        sys.exit(stopped_by_signal_exit_code(exc.signum))
    if cfg.bench.output:
        Path(cfg.bench.output).write_text(json.dumps(figures, indent=2) + "\n")
        report.console.print(f"figures written to {cfg.bench.output}")


def main() -> None:
    """Console entry point `pipeline-bench`."""
    cli.run(bench, "bench", "pipeline.bench", validate_bench)


if __name__ == "__main__":
    main()

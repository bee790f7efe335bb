"""`python -m pipeline.bench` (and `pipeline-bench`): compose and validate every problem at once
(cli.run), then measure (modes.py), print, and write bench.output as JSON."""

from __future__ import annotations

# Before the imports below: a stop signal in the seconds torch and Lightning take is one line.
if __name__ == "__main__":  # python -m pipeline.bench
    from pipeline import stop_now as _stop_now
    from pipeline.launch_rank import refuse_unreadable_rank as _refuse

    _refuse("pipeline.bench")  # a rank Lightning's import would end on
    _stop_now.install("pipeline.bench")

import json
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline import cli, report, stop_now
from pipeline.bench.config import validate_bench
from pipeline.bench.loops import BenchStopped
from pipeline.bench.modes import measure
from pipeline.bench.outside import TimedProcessFailed
from pipeline.config_dir import CONFIG_DIR
from pipeline.errors import (
    CONFIG_ERROR_EXIT_CODE,
    DIVERGED_EXIT_CODE,
    PROCESS_FAILED_EXIT_CODE,
    DivergenceError,
)
from pipeline.overrides import shell_word

PROGRAM = "pipeline.bench"
report.silence_known_warnings()  # as train and eval: Lightning's, asking nothing of the user


@hydra.main(config_path=str(CONFIG_DIR), config_name="bench", version_base="1.3")
def bench(cfg: DictConfig) -> None:
    """One bench of a config that cli.run has validated."""
    report.route_lightning_logs_to_hydra()
    hydra_cfg = HydraConfig.get()
    try:
        figures = measure(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))
    except DivergenceError as exc:
        report.show_error(
            PROGRAM,
            f"a timed run diverged, so its steps are not the same work ({exc}); "
            "bench with loss=mse, or a smaller data.batch_size",
        )
        sys.exit(DIVERGED_EXIT_CODE)
    except TimedProcessFailed as exc:
        report.show_error(PROGRAM, f"{exc}; no figures made")
        sys.exit(PROCESS_FAILED_EXIT_CODE)
    except BenchStopped as exc:
        raise stop_now.Stopped(exc.signum) from None  # main's line: no figures made
    stop_now.finished()  # measured and printed: a Ctrl-C from here on changes nothing
    if cfg.bench.output:
        with stop_now.held():  # whole: a signal waits for the write's end
            write_figures(Path(cfg.bench.output), figures)


def write_figures(path: Path, figures: dict[str, object]) -> None:
    """bench.output as JSON, whole or not at all: written beside it and renamed over it (a kill
    mid-write left a cut file); a write that fails is one line, exit 2, the figures printed."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_text(json.dumps(figures, indent=2) + "\n")
        os.replace(partial, path)
    except BaseException as exc:  # a failed write, or anything that cut it: no .partial left
        partial.unlink(missing_ok=True)
        if not isinstance(exc, OSError):
            raise
        report.show_error(
            PROGRAM, f"cannot write bench.output={shell_word(str(path))} ({exc.strerror or exc}); "
            "the figures are printed above"
        )  # fmt: skip
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    report.console.print(f"figures written to {shell_word(str(path))}", markup=False)


def main() -> None:
    """Console entry point `pipeline-bench` (through pipeline.entry_points)."""
    with stop_now.command(PROGRAM, "no figures made"):  # mid-measure, BenchStopped's signal too
        cli.run(bench, "bench", PROGRAM, validate_bench)


if __name__ == "__main__":
    main()

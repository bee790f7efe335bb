"""`resume=<run dir>` (or `resume=latest`): continue a run in its own directory, with its own
overrides.

The run's files are not touched until the resumed run is known to work: Hydra is told not to
rewrite `.hydra/` (hydra.output_subdir=null) and the pipeline writes it once training starts
(callbacks/hydra_files.py); the checkpoint's fit to the config is checked in the pre-flight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.layout import (
    BENCH_RUNS,
    LAST_CHECKPOINT,
    OUTPUTS,
    SAVED_OVERRIDES,
    SEARCH_TRIALS,
)
from pipeline.overrides import override, shell_word

RESUME_KEY = "resume="
DEFER_HYDRA_FILES = "hydra.output_subdir=null"
NOT_CARRIED = ("ckpt_path=",)  # set anew by every resume


LATEST = "latest"


def latest_run(outputs: Path) -> Path | None:
    """The run under `outputs` (sweep jobs included) whose last.ckpt was written last; not a
    trial of pipeline.search (outputs/search/: its study keeps the value it measured, and a
    resume would retrain it in place), nor a soak of pipeline.bench (outputs/bench/: its
    overrides are the bench's, which training refuses)."""
    others = [outputs / SEARCH_TRIALS, outputs / BENCH_RUNS]
    checkpoints = [
        ckpt
        for ckpt in outputs.glob(f"**/{LAST_CHECKPOINT}")
        if (ckpt.parents[1] / SAVED_OVERRIDES).is_file()
        and not any(ckpt.is_relative_to(folder) for folder in others)
    ]
    newest = max(checkpoints, key=lambda p: p.stat().st_mtime, default=None)
    return newest.parents[1] if newest is not None else None


def _key(line: str) -> str:
    """The key an override sets: `+trainer.max_epochs=2` (the pipeline saves trainer.* so) and
    `trainer.max_epochs=4` both set trainer.max_epochs, which Hydra refused to add twice."""
    return line.lstrip("+~").split("=", 1)[0]


def _unquoted(value: str) -> str:
    """A value in one pair of Hydra's quotes ('…' or "…"), as hydra.run.dir and ckpt_path take
    paths with spaces or accents, without them."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


@dataclass(frozen=True)
class Resume:
    """A command line with `resume=` expanded."""

    overrides: list[str]
    run_dir: Path | None  # the run being resumed; None without resume=
    problems: list[str]
    restart: bool = False  # the run saved no checkpoint: it starts again there, as it started


def expand_resume(overrides: list[str]) -> Resume:
    """`resume=<run dir>` → that run's saved overrides, then the command line's, then its
    last.ckpt and its directory; a run that saved no checkpoint starts again there (`restart`)."""
    wanted = [o for o in overrides if o.startswith(RESUME_KEY)]
    if not wanted:
        return Resume(overrides, None, [])
    given = _unquoted(wanted[-1][len(RESUME_KEY) :])
    if given == LATEST:
        newest = latest_run(Path(OUTPUTS))
        if newest is None:
            return Resume(overrides, None, [
                f"resume=latest: no run under {OUTPUTS}/ has a {LAST_CHECKPOINT}; give the run's folder: resume=<dir>"
            ])  # fmt: skip
        given = str(newest)
    run_dir = Path(given).expanduser().absolute()
    saved, ckpt = run_dir / SAVED_OVERRIDES, run_dir / LAST_CHECKPOINT
    if not saved.is_file():
        return Resume(overrides, None, [
            f"resume={given} is not a run directory (it has no {SAVED_OVERRIDES}); "
            "give a run's folder under outputs/, e.g. resume=outputs/2026-11-25/21-32-58"
        ])  # fmt: skip
    restart = not ckpt.is_file()
    if restart and any(ckpt.parent.glob("*.ckpt")):  # a kill between a step file and last.ckpt
        return Resume(overrides, None, [
            f"resume={given}: the run has step checkpoints but no {LAST_CHECKPOINT}; continue from "
            f"one of them with ckpt_path=<it> hydra.run.dir=<a new folder>"
        ])  # fmt: skip
    rest = [o for o in overrides if not o.startswith(RESUME_KEY)]
    given_again = {_key(o) for o in rest}  # the command line's win: not the saved ones beside them
    previous = [  # a restart keeps the run's own ckpt_path=: the state it started from
        str(o)
        for o in OmegaConf.load(saved)
        if (restart or not str(o).startswith(NOT_CARRIED)) and _key(str(o)) not in given_again
    ]
    return Resume(
        [
            *previous,
            *rest,
            *([] if restart else [override("ckpt_path", ckpt)]),
            override("hydra.run.dir", run_dir),
            DEFER_HYDRA_FILES,
        ],
        run_dir,
        [],
        restart,
    )


def restart_line(run_dir: Path) -> str:
    """What a resume of a run that saved no checkpoint does (a stop or a kill before its first)."""
    return (
        f"{shell_word(f'resume={run_dir}')}: the run saved no checkpoint, so it starts again in "
        "that directory from where it started, with its own overrides (the earlier attempt's "
        "TensorBoard events stay beside the new ones)"
    )

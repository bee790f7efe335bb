"""The pre-flight's last step: claim the run directory for this process (or receive it, as a
torchrun rank or a DDP child), refuse one that holds another run or another live process, and
check that its disk holds the checkpoints."""

from __future__ import annotations

from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.config_limits import disk_problems
from pipeline.launch_rank import is_launch_rank_zero, launcher_rank, torchrun_rank
from pipeline.override_checks import compose, has_key
from pipeline.overrides import override, shell_word
from pipeline.rundir import (
    RUN_DIR_HANDOVER_TIMEOUT_S,
    HandoverError,
    RunDirInUse,
    claim_run_dir,
    hand_over_run_dir,
    holds_run,
    is_slurm_requeue,
    lock_run_dir,
    receive_run_dir,
    release_run_dir,
)


def claim_planned_run_dir(config_name: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """Pin hydra.run.dir to a directory this run created: (overrides, problems).

    Left to the user when they set it, and to Lightning in its DDP children (which get the
    parent's directory). Under torchrun, rank 0 claims and hands it to the other ranks through
    torch's store, on any node.
    """
    if any(o.startswith("hydra.run.dir=") for o in overrides):  # every rank has the same
        return [*overrides, *other_rank_outputs(overrides, launcher_rank())], []
    wanted = Path(
        str(OmegaConf.select(compose(config_name, overrides, with_hydra=True), "hydra.run.dir"))
    )
    rank = torchrun_rank()
    if rank:  # torchrun, not rank 0
        try:
            shared = receive_run_dir(RUN_DIR_HANDOVER_TIMEOUT_S)
        except HandoverError as exc:
            return overrides, [f"torchrun rank {rank}: {exc}"]
        return [
            *overrides,
            override("hydra.run.dir", shared),
            *other_rank_outputs(overrides, rank),
        ], []
    try:
        claimed = claim_run_dir(wanted)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return overrides, [
            f"cannot create the run directory {wanted} ({reason}); run from a writable directory "
            "or set hydra.run.dir=/a/writable/path"
        ]
    if rank == 0:
        try:
            hand_over_run_dir(claimed, RUN_DIR_HANDOVER_TIMEOUT_S)
        except HandoverError as exc:
            return overrides, [f"torchrun rank 0: {exc}"]
    return [*overrides, override("hydra.run.dir", claimed)], []


LIGHTNING_CHILD_JOB = "hydra.job.name=train_ddp_process_"  # what Lightning's DDP children get


def other_rank_outputs(overrides: list[str], rank: int | None) -> list[str]:
    """For a launcher's rank other than 0 (`launcher_rank`), which writes into rank 0's run
    directory: a log of its own, <job>_rank<N>.log (train_rank<N>.log, or the user's
    hydra.job.name with the suffix), and no .hydra/ (rank 0 writes it). Without them every rank
    of a pinned hydra.run.dir (the SLURM recipe, torchrun with one) wrote train.log, each line
    once a rank, and .hydra/ at once. Nothing for Lightning's own DDP children (it names them)."""
    if not rank or any(o.startswith(LIGHTNING_CHILD_JOB) for o in overrides):
        return []
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.job.name=")]
    return [
        f"hydra.job.name={named[-1] if named else 'train'}_rank{rank}",
        "hydra.output_subdir=null",
    ]


def run_dir_of(overrides: list[str]) -> Path:
    """The value of the last hydra.run.dir= override, unquoted as Hydra reads it."""
    line = next(o for o in reversed(overrides) if o.startswith("hydra.run.dir="))
    return Path(str(OverridesParser.create().parse_override(line).value()))


def resolved_run_dir(config_name: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """A hydra.run.dir the user gave with an interpolation (`${oc.env:HOME}/runs/a`), pinned to
    the folder it names, as Hydra would resolve it: (overrides, problems). The claim, the lock
    and the checks for a run already there acted on a literal folder `${oc.env:HOME}/runs/a` in
    the working directory while the run went to the home folder. A folder whose name holds `${`
    itself cannot be a run directory: Hydra reads it as an interpolation when it names train.log."""
    line = next(o for o in reversed(overrides) if o.startswith("hydra.run.dir="))
    if "${" not in line:
        return overrides, []
    given = line.split("=", 1)[1]
    if "\\${" not in line:  # an interpolation, not a literal ${ (which Hydra cannot take)
        try:
            folder = OmegaConf.select(
                compose(config_name, overrides, with_hydra=True), "hydra.run.dir"
            )
        except (OmegaConfBaseException, HydraException) as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return overrides, [f"hydra.run.dir={given} cannot be resolved: {why}"]
        if "${" not in str(folder):
            return [*overrides, override("hydra.run.dir", folder)], []
    return overrides, [
        f"hydra.run.dir={given}: a folder whose name holds '${{' cannot be a run directory "
        "(Hydra reads it as an interpolation when it names train.log); choose another folder"
    ]


def empty_run_dir(overrides: list[str]) -> bool:
    """Whether the command line's last hydra.run.dir= is empty (bare, or empty quotes)."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")]
    return bool(given) and given[-1].strip().strip("'\"").strip() == ""


def own_run_dir(
    config_name: str, overrides: list[str], resuming: Path | None
) -> tuple[list[str], list[str]]:
    """Claim the run directory for this process: (overrides, problems). A directory that already
    holds a run is refused unless this is a resume of it (or SLURM's requeue of its job), and a
    directory another live process holds is refused; the disk must hold the checkpoints."""
    explicit = any(o.startswith("hydra.run.dir=") for o in overrides)
    if explicit and empty_run_dir(overrides):  # else the working directory itself
        return overrides, [
            "hydra.run.dir is empty, which would write the run into the working directory; "
            "name a folder, e.g. hydra.run.dir=outputs/my-run"
        ]
    if explicit:
        overrides, problems = resolved_run_dir(config_name, overrides)
        if problems:
            return overrides, problems
    existed = explicit and run_dir_of(overrides).exists()
    overrides, problems = claim_planned_run_dir(config_name, overrides)
    if problems or not is_launch_rank_zero():
        return overrides, problems
    run_dir = run_dir_of(overrides)
    if explicit and resuming is None and holds_run(run_dir) and not is_slurm_requeue():
        return overrides, [
            f"hydra.run.dir={run_dir} already holds a run; continue it with "
            f"{shell_word(f'resume={run_dir}')}, or choose a new directory"
        ]
    try:
        lock_run_dir(run_dir)
    except RunDirInUse as exc:
        return overrides, [
            f"the run directory {run_dir} is in use by another live process (pid {exc}); "
            "wait for it to end, or choose another hydra.run.dir"
        ]
    except OSError as exc:
        return overrides, [
            f"cannot create the run directory {run_dir} ({exc.strerror or exc}); run from a "
            "writable directory or set hydra.run.dir=/a/writable/path"
        ]
    cfg = compose(config_name, overrides)
    problems = disk_problems(cfg, run_dir) if has_key(cfg, "optimizer") else []  # eval saves none
    if problems and not existed:  # leave nothing behind
        release_run_dir(run_dir)
    return overrides, problems

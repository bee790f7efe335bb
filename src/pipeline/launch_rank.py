"""Which process of a launch this is, from its environment alone (no torch: early_signals asks
before torch is imported)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.problem_report import report_problems


def is_launch_rank_zero() -> bool:
    """Whether this process is the one that owns the run directory: not a process Lightning,
    torchrun or SLURM started as another rank (they use the directory rank 0 claimed). A rank
    is read as int() reads it (RANK=00 or ' 0' is rank 0, and claims the directory: review)."""
    names = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    return all(_whole(os.environ[v]) == 0 for v in names if v in os.environ)


def torchrun_rank() -> int | None:
    """This process's global rank when torchrun started it, else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    return int(os.environ.get("RANK", "0"))


def launcher_rank() -> int | None:
    """This process's global rank where a launcher started it as one of several processes
    (torchrun: RANK; SLURM's srun, one task a rank: SLURM_PROCID), else None. Not a process
    Lightning started (it names their logs itself)."""
    rank = torchrun_rank()
    if rank is None and "SLURM_PROCID" in os.environ:
        return int(os.environ["SLURM_PROCID"])
    return rank


# Each launcher's rank and the variables that count the processes it is among, the first set
# one read (torchrun sets all four; Lightning's own launcher gives its children LOCAL_RANK and
# WORLD_SIZE; SLURM's srun, one task a rank, SLURM_PROCID and SLURM_NTASKS; LSF's jsrun
# JSM_NAMESPACE_RANK and JSM_NAMESPACE_SIZE, which Lightning reads for a rank where the others
# are unset: JSM_NAMESPACE_RANK=1 alone crashed at the first logged step, as RANK=1 did).
RANK_VARIABLES = (("RANK", ("WORLD_SIZE",)), ("LOCAL_RANK", ("LOCAL_WORLD_SIZE", "WORLD_SIZE")),
                  ("SLURM_PROCID", ("SLURM_NTASKS",)),
                  ("JSM_NAMESPACE_RANK", ("JSM_NAMESPACE_SIZE",)))  # fmt: skip


def launch_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The launch variables that cannot describe this process, one line each: a rank that is not
    a whole number, not below its launch's number of processes, or past 0 with nothing counting
    them (a launch of one process has rank 0 only). Lightning and this package would take such a
    process for a rank that does not exist (SLURM_PROCID=1 with SLURM_NTASKS=1, or RANK=1 alone:
    it trained with no TensorBoard writer, and died at the first logged step). Lightning reads
    the first of RANK, LOCAL_RANK, SLURM_PROCID and JSM_NAMESPACE_RANK set as it is imported:
    one that is not a number ends there, which `unreadable_at_import` words first. (LSF's jsrun
    is checked here only: a run directory's claim knows torchrun's and SLURM's ranks.)"""
    problems = []
    for rank_name, size_names in RANK_VARIABLES:
        if (given := environ.get(rank_name)) is None:
            continue
        fix = f"unset {rank_name}, or start the processes with {_launcher(rank_name)}"
        rank = _whole(given)
        size_name = next((n for n in size_names if n in environ), None)
        size_given = None if size_name is None else environ[size_name]
        size = None if size_given is None else _whole(size_given)
        if rank is None:
            problems.append(_not_a_rank(rank_name, given))
        elif size_name is None and rank > 0:
            problems.append(
                f"{rank_name}={given} is past rank 0, and no {' or '.join(size_names)} counts the "
                f"processes (one process is rank 0); {fix}"
            )
        elif size is None and rank > 0:
            problems.append(
                f"{size_name}={size_given!r} is not a number of processes (a whole number), and "
                f"{rank_name}={given} is past rank 0; {fix}"
            )
        elif size is not None and rank >= size:
            problems.append(
                f"{rank_name}={given} is not below {size_name}={size_given} (ranks count "
                f"from 0); {fix}"
            )
    return problems


# What Lightning reads with int() as it is imported: the first of these set (its rank_zero), and
# LOCAL_RANK whatever else is set (torchmetrics', which Lightning imports).
IMPORT_READS = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def unreadable_at_import(environ: Mapping[str, str] = os.environ) -> list[str]:
    """A line for each rank variable that Lightning's import would end on, in its own ValueError
    (RANK=abc: a traceback from every command, before `launch_problems` could be asked). Only
    what int() refuses: a negative rank imports, and `launch_problems` words it."""
    first = next((name for name in IMPORT_READS if name in environ), None)
    problems = []
    for name in dict.fromkeys(n for n in (first, "LOCAL_RANK") if n is not None and n in environ):
        try:
            int(environ[name])
        except ValueError:
            problems.append(_not_a_rank(name, environ[name]))
    return problems


def refuse_unreadable_rank(command: str) -> None:
    """A command's first line: exit 2 (a config problem, errors.CONFIG_ERROR_EXIT_CODE: errors
    imports torch) with `unreadable_at_import`'s lines, reported as every config problem is,
    where there are any; nothing otherwise. Standard library only, before any import of
    Lightning."""
    problems = unreadable_at_import()
    if problems:
        report_problems(problems, command)
        raise SystemExit(2)


def _not_a_rank(name: str, given: str) -> str:
    return (f"{name}={given!r} is not a rank (a whole number, from 0); unset {name}, or start the "
            f"processes with {_launcher(name)}")  # fmt: skip


def _whole(text: str) -> int | None:
    """`text` as Lightning and torch read a rank (int()), where it is a whole number ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _launcher(rank_name: str) -> str:
    if rank_name.startswith("SLURM"):
        return "srun (one task a rank)"
    return "jsrun" if rank_name.startswith("JSM") else "torchrun"  # JSM_NAMESPACE_RANK: LSF's


def one_of_several(environ: Mapping[str, str] = os.environ) -> str | None:
    """`NAME=VALUE` of the first launch variable that says a launcher started this process as one
    of several: a rank past 0, or, beside torchrun's rank variables, a number of processes past 1
    (rank 0 of `torchrun --nproc_per_node=2`: WORLD_SIZE=2; not SLURM_NTASKS, which an sbatch
    script's one process has too, its SLURM_PROCID 0: review); None otherwise."""
    for rank_name, size_names in RANK_VARIABLES:
        if rank_name not in environ:
            continue
        rank = _whole(environ[rank_name])
        if rank is not None and rank > 0:
            return f"{rank_name}={environ[rank_name]}"
        if rank_name == "SLURM_PROCID":  # an sbatch script's own process: 0 of SLURM_NTASKS
            continue
        size_name = next((n for n in size_names if n in environ), None)
        if size_name is not None and (_whole(environ[size_name]) or 0) > 1:
            return f"{size_name}={environ[size_name]}"
    return None

"""Which process of a launch this is, from its environment alone (no torch: early_signals asks
before torch is imported)."""

from __future__ import annotations

import os
from collections.abc import Mapping


def is_launch_rank_zero() -> bool:
    """Whether this process is the one that owns the run directory: not a process Lightning,
    torchrun or SLURM started as another rank (they use the directory rank 0 claimed)."""
    return all(
        os.environ.get(v, "0") == "0" for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    )


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


# Each launcher's rank and the number of processes it counts among (torchrun sets both pairs;
# SLURM's srun the last, one task a rank).
RANK_VARIABLES = (("RANK", "WORLD_SIZE"), ("LOCAL_RANK", "LOCAL_WORLD_SIZE"),
                  ("SLURM_PROCID", "SLURM_NTASKS"))  # fmt: skip


def launch_problems(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The launch variables that cannot describe this process, one line each: a rank that is not
    a whole number, or not below its launch's number of processes. Lightning and this package
    would take such a process for a rank that does not exist (SLURM_PROCID=1 with SLURM_NTASKS=1:
    it trained with no TensorBoard writer, and died at the first logged step)."""
    problems = []
    for rank_name, size_name in RANK_VARIABLES:
        rank, size = environ.get(rank_name), environ.get(size_name)
        if rank is None:
            continue
        fix = f"unset {rank_name}, or start the processes with {_launcher(rank_name)}"
        if not rank.strip().isdigit():
            problems.append(f"{rank_name}={rank!r} is not a rank (a whole number, from 0); {fix}")
        elif size is not None and size.strip().isdigit() and int(rank) >= int(size):
            problems.append(
                f"{rank_name}={rank} is not below {size_name}={size} (ranks count from 0); {fix}"
            )
    return problems


def _launcher(rank_name: str) -> str:
    return "srun (one task a rank)" if rank_name.startswith("SLURM") else "torchrun"

"""Which process of a launch this is, from its environment alone (no torch: early_signals asks
before torch is imported)."""

from __future__ import annotations

import os


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

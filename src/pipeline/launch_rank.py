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

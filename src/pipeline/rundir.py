"""Claiming a run directory: two runs started in the same second never share one."""

from __future__ import annotations

from pathlib import Path

MAX_SUFFIX = 1000


def claim_run_dir(wanted: Path) -> Path:
    """Create `wanted`, or `wanted-1`, `wanted-2`, … if taken; the creation itself is the claim
    (mkdir is atomic), so concurrent runs get distinct folders. Raises OSError if unwritable."""
    wanted.parent.mkdir(parents=True, exist_ok=True)
    for n in range(MAX_SUFFIX):
        candidate = wanted if n == 0 else wanted.with_name(f"{wanted.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{wanted} and {MAX_SUFFIX - 1} numbered variants all exist")

"""Claiming a run directory: two runs started in the same second never share one."""

from __future__ import annotations

import os
import time
from pathlib import Path

MAX_SUFFIX = 1000
RANK0_PUBLISH_TIMEOUT_S = 120


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


def torchrun_rank() -> int | None:
    """This process's global rank when torchrun started it, else None."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    return int(os.environ.get("RANK", "0"))


def torchrun_pointer(outputs: Path) -> Path:
    """Where rank 0 of this torchrun job publishes its run directory for the other ranks.

    Keyed by torchrun's run id; with the default id ('none'), by the master port and the
    torchrun agent's pid, which every process of a single-node job shares.
    """
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    key = (
        run_id
        if run_id not in ("", "none")
        else f"{os.environ.get('MASTER_PORT', '')}-{os.getppid()}"
    )
    return outputs / ".torchrun" / key


def publish(pointer: Path, run_dir: Path) -> None:
    """Write `run_dir` into `pointer` atomically."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    partial = pointer.with_name(f".{pointer.name}.{os.getpid()}")
    partial.write_text(str(run_dir))
    os.replace(partial, pointer)


def wait_for_published(pointer: Path, not_before: float, timeout_s: float) -> Path | None:
    """The run directory rank 0 published after `not_before` (a time.time()), or None on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pointer.is_file() and pointer.stat().st_mtime >= not_before:
            return Path(pointer.read_text())
        time.sleep(0.1)
    return None

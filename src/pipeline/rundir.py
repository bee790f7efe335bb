"""Claiming a run directory: two runs started in the same second never share one, and a run
directory is written by one live process at a time."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Any

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


RUN_MARKERS = (".hydra", "checkpoints")  # what a run directory holds once a run has started
LOCK_FILE = ".lock"
_held_locks: list[
    Any
] = []  # open lock files: a run directory stays claimed while this process lives


def holds_run(path: Path) -> bool:
    """Whether `path` already holds a run (its config or its checkpoints)."""
    return any((path / marker).exists() for marker in RUN_MARKERS)


def is_launch_rank_zero() -> bool:
    """Whether this process is the one that owns the run directory: not a process Lightning,
    torchrun or SLURM started as another rank (they use the directory rank 0 claimed)."""
    return all(
        os.environ.get(v, "0") == "0" for v in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")
    )


def is_slurm_requeue() -> bool:
    """A SLURM job started again by `scontrol requeue` (or --requeue after a preemption)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


class RunDirInUse(Exception):
    """Another live process holds the run directory."""


def lock_run_dir(run_dir: Path) -> None:
    """Claim `run_dir` for this process's lifetime: an exclusive flock on `<run_dir>/.lock`,
    which the kernel releases when the process ends, however it ends (kill -9 included), so a
    dead run never keeps its directory. Raises RunDirInUse naming the holder's pid."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")  # noqa: SIM115 (held open until the process ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirInUse(holder) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_locks.append(handle)


def release_run_dir(run_dir: Path) -> None:
    """Undo lock_run_dir on a directory this process created: unlock, and remove it if empty."""
    for handle in [h for h in _held_locks if Path(h.name).parent == run_dir]:
        _held_locks.remove(handle)
        handle.close()
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()

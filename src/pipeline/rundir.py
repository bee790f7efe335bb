"""Claiming a run directory: two runs started in the same second never share one, and the ranks
of a torchrun job, on any number of nodes, share the one rank 0 claimed (through torch's store at
MASTER_ADDR:MASTER_PORT, so no shared file system is needed); and a run directory is written by
one live process at a time."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pipeline.layout import LAST_CHECKPOINT, RUN_MARKERS

MAX_SUFFIX = 1000
RUN_DIR_HANDOVER_TIMEOUT_S = 120


class HandoverError(Exception):
    """Rank 0 of a torchrun job could not give the other ranks its run directory."""


def _make_parents(path: Path) -> None:
    """`path`'s missing parent folders made, and remembered: discard_run_dir removes them again
    when it leaves them empty (a stopped eval left outputs/eval/<date>/ behind, empty)."""
    missing = [p.absolute() for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    _parents_made_here.update(p.resolve() for p in missing)


def claim_run_dir(wanted: Path) -> Path:
    """Create `wanted`, or `wanted-1`, `wanted-2`, … if taken; the creation itself is the claim
    (mkdir is atomic), so concurrent runs get distinct folders. Raises OSError if unwritable."""
    _make_parents(wanted)
    for n in range(MAX_SUFFIX):
        candidate = wanted if n == 0 else wanted.with_name(f"{wanted.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        except FileNotFoundError:  # another command removed the empty parent it had made
            _make_parents(wanted)
            try:
                candidate.mkdir()
            except FileExistsError:
                continue
        _created_here.add(candidate.resolve())
        return candidate
    raise FileExistsError(f"{wanted} and {MAX_SUFFIX - 1} numbered variants all exist")


def _store_address() -> str:
    return f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"


def _run_dir_key() -> str:
    """This job's key in the store: by run id and restart count, since the agent keeps its store
    across restarts; under `pipeline/`, clear of torch's own keys."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    return f"pipeline/run_dir/{run_id}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


@functools.cache
def _torchrun_store(timeout_s: float) -> dist.Store:
    """The store init_process_group will use, reached the way it reaches it (env://).

    Under torchrun's agent store (TORCHELASTIC_USE_AGENT_STORE=True: static and c10d
    rendezvous), a client of the store the node-rank-0 agent hosts at MASTER_ADDR:MASTER_PORT;
    otherwise rank 0 hosts it (multi-tenant). Cached, so a store rank 0 hosts stays up while the
    other ranks read it, and init_process_group then shares the same server.
    """
    store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s)))
    return store


def hand_over_run_dir(run_dir: Path, timeout_s: float) -> None:
    """Rank 0: give every other rank of this torchrun job `run_dir`.

    Raises HandoverError when the store is unreachable.
    """
    try:
        _torchrun_store(timeout_s).set(_run_dir_key(), str(run_dir))
    except dist.DistError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise HandoverError(f"cannot reach the store at {_store_address()} ({reason})") from exc


def receive_run_dir(timeout_s: float) -> Path:
    """Ranks other than 0: the run directory rank 0 handed over, waiting up to `timeout_s`.

    Raises HandoverError when none comes (rank 0 failed, or its node's agent is gone).
    """
    try:
        store = _torchrun_store(timeout_s)
        store.wait([_run_dir_key()], timedelta(seconds=timeout_s))
        return Path(os.fsdecode(store.get(_run_dir_key())))
    except dist.DistError as exc:
        raise HandoverError(
            f"rank 0 handed over no run directory through the store at {_store_address()} (waited "
            f"up to {timeout_s:g} s, or until the store closed); did rank 0 fail? see its output"
        ) from exc


LOCK_FILE = ".lock"
_created_here: set[Path] = set()  # run directories this process made (not there before it)
_parents_made_here: set[Path] = set()  # and the folders it made on the way (outputs/<date>)
_held_locks: list[
    Any
] = []  # open lock files: a run directory stays claimed while this process lives


def created_here() -> list[Path]:
    """The run directories this process made (claim_run_dir, lock_run_dir), resolved: they held
    nothing before it."""
    return sorted(_created_here)


def untrained_made_here() -> list[Path]:
    """The run directories this process made (claim_run_dir, lock_run_dir), resolved, that hold
    no last.ckpt: nothing was in them before it, and nothing it trained is."""
    return [d for d in created_here() if not (d / LAST_CHECKPOINT).exists()]


def forget_created() -> None:
    """The command has ended: what it made is no longer removable as unused by this process."""
    _created_here.clear()
    _parents_made_here.clear()


def holds_run(path: Path) -> bool:
    """Whether `path` already holds a run (its config or its checkpoints)."""
    return any((path / marker).exists() for marker in RUN_MARKERS)


def is_slurm_requeue() -> bool:
    """A SLURM job started again by `scontrol requeue` (or --requeue after a preemption)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0


class RunDirInUse(Exception):
    """Another live process holds the run directory."""


def lock_run_dir(run_dir: Path) -> None:
    """Claim `run_dir` for this process's lifetime: an exclusive flock on `<run_dir>/.lock`,
    which the kernel releases when the process ends, however it ends (kill -9 included), so a
    dead run never keeps its directory. Raises RunDirInUse naming the holder's pid."""
    if not run_dir.exists():
        _make_parents(run_dir)
        run_dir.mkdir(exist_ok=True)
        _created_here.add(run_dir.resolve())
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


def discard_run_dir(run_dir: Path) -> None:
    """Remove a run directory this process made and everything in it (a run stopped before it
    trained): the log files into it closed first, then the claim released."""
    for name in [None, *logging.Logger.manager.loggerDict]:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            if Path(handler.baseFilename).resolve().is_relative_to(run_dir.resolve()):
                logger.removeHandler(handler)
                handler.close()
    release_run_dir(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    _created_here.discard(run_dir.resolve())
    for parent in run_dir.resolve().parents:  # the folders made on the way, where left empty
        if parent not in _parents_made_here:
            break
        try:
            parent.rmdir()
        except OSError:  # another run's folder is in it, or a file
            break
        _parents_made_here.discard(parent)


def release_run_dir(run_dir: Path) -> None:
    """Undo lock_run_dir on a directory this process created: unlock, and remove it if empty."""
    for handle in [h for h in _held_locks if Path(h.name).parent == run_dir]:
        _held_locks.remove(handle)
        handle.close()
    (run_dir / LOCK_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        run_dir.rmdir()

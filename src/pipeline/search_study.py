"""The Optuna study behind pipeline.search: opening it, and sharing its trial budget between
processes.

`search.n_trials` is a budget for the whole study, every command together: a trial takes a slot
while it runs and keeps it once it has finished by itself (complete, pruned, or failed with an
`outcome`). A trial whose process was killed stays RUNNING in the database: the next command on
this machine finds its process gone and marks it failed without an `outcome`, which frees its
slot, so running the same command again tops the study up to n_trials. Counting the slots and
starting a trial happen under a file lock beside the SQLite file, so several processes never
start more trials than the budget.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

WORKER_ATTR = "worker"  # host:pid of the process running the trial
OUTCOME_ATTR = "outcome"  # how a trial that ended by itself ended: complete, pruned, diverged, …
SQLITE_TIMEOUT_S = 60  # how long a write waits for another process's (SQLite locks the file)


def sqlite_path(storage: str) -> Path | None:
    """The database file of a sqlite:/// URL; None for another kind of storage."""
    url = make_url(storage)
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def storage_problems(storage: str) -> list[str]:
    """Why `storage` cannot hold a study that several commands share, if it cannot."""
    try:
        url = make_url(storage)
    except ArgumentError:
        return [
            f"search.storage={storage} is not a database URL; set search.storage=sqlite:///outputs/search/<study>.db"
        ]
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        return [
            f"search.storage={storage} is an in-memory database, gone when the command ends; "
            "set search.storage=sqlite:///outputs/search/<study>.db"
        ]
    return []


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def is_alive_here(worker: str) -> bool | None:
    """Whether the process `worker` names is alive; None when it ran on another host."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def open_storage(storage: str) -> optuna.storages.RDBStorage:
    """The study's storage, its tables created if new (a new SQLite file's folder must exist:
    the StudyLock makes it)."""
    db = sqlite_path(storage)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if db is not None else {}
    )
    return optuna.storages.RDBStorage(storage, engine_kwargs=engine_kwargs)


def study_exists(storage: optuna.storages.RDBStorage, name: str) -> bool:
    return any(s.study_name == name for s in storage.get_all_studies())


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial uses up one of the study's n_trials: it finished by itself."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and OUTCOME_ATTR in trial.user_attrs
    )


def taken_slots(study: optuna.Study) -> int:
    """Trials that count against n_trials: finished by themselves, or running now."""
    trials = study.get_trials(deepcopy=False)
    return sum(1 for t in trials if counted(t) or t.state == TrialState.RUNNING)


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark failed (without an outcome, so uncounted) the RUNNING trials whose process on this
    machine is gone; returns their numbers. Call under the StudyLock: a live process sets its
    trial's worker before it lets go of the lock, so a RUNNING trial without one is dead too."""
    dead = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get(WORKER_ATTR)
        if worker is None or is_alive_here(worker) is False:
            study.tell(t.number, state=TrialState.FAIL)
            dead.append(t.number)
    return dead


class StudyLock:
    """An exclusive flock on `<database>.lock`, held from counting the slots until the new
    trial is RUNNING with its worker set; a no-op for storages other than SQLite files."""

    def __init__(self, db: Path | None) -> None:
        self.path = None if db is None else db.with_name(db.name + ".lock")
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        if self.path is None or self._handle is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a")  # noqa: SIM115 (released by release())
        fcntl.flock(self._handle, fcntl.LOCK_EX)

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

"""gpu-check's processes: each check in a process group of its own that ends with it, dies with
gpu-check, and is killed whole when it outlives its time or a stop signal ends gpu-check; and
how long gpu-check's own process has run (its 8 minutes count from its start)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def process_age_s() -> float:
    """Seconds since this process started (Linux's /proc; 0 where it cannot tell): importing
    torch takes seconds of gpu-check's 8 minutes."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started_s = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started_s)
    except (OSError, ValueError, IndexError):
        return 0.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, for prctl (Linux only)."""
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def _own_group_dying_with_parent(libc: ctypes.CDLL | None) -> Callable[[], None]:
    """The check process's set-up, between fork and exec: a process group of its own, and a
    SIGKILL when gpu-check dies (Linux's PR_SET_PDEATHSIG), killed itself or not."""

    parent = os.getpid()

    def preexec() -> None:
        os.setpgrp()
        if libc is not None:
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:  # gpu-check died before the signal was asked for
                os._exit(1)

    return preexec


def run_one(argv: list[str], timeout_s: float) -> int | None:
    """`argv`'s exit status, or None if it outlived `timeout_s`. It runs in a process group of
    its own, killed when it ends, with whatever it left running (a timed-out test's runs, a
    bench's workers), so that nothing of it holds the GPU during the next check; it dies with
    gpu-check too."""
    # gpu-check has no threads: preexec_fn cannot race one
    proc = subprocess.Popen(argv, preexec_fn=_own_group_dying_with_parent(_libc()))
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    finally:  # a second stop signal waits until the group is killed
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def exit_on_stop_signals() -> None:
    """SIGTERM (a device call's limit), SIGHUP and SIGINT exit: the check in flight ends with
    everything it started (run_one's clean-up), where Python's default would leave them
    running. (SIGKILL cannot be caught: the check's own process dies with gpu-check, by the
    parent-death signal, but what it started lives on until the device call's own clean-up.)"""
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda received, frame: sys.exit(128 + received))

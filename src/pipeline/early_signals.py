"""Ctrl-C (SIGINT) and SIGTERM from `python -m pipeline.train`'s start to its first step.

Before training starts no GracefulStop is listening: a Ctrl-C raised KeyboardInterrupt wherever
the program was (a traceback from inside the model's build, or, in a finalizer or a callback
from C, a KeyboardInterrupt Python prints and drops: the run trained to its end). From `install`
on, a stop signal is only recorded; the program asks `received()` between its phases and stops
with one line, and the run's GracefulStop `take`s a signal that arrived during Lightning's setup
(it stops after the first step, saving it). A second Ctrl-C raises KeyboardInterrupt at once
(`forced()` says so). Once taken, the handler passes signals on to the handler it replaced.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from pipeline.launch_rank import is_launch_rank_zero

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_replaced: dict[int, Any] = {}  # installed: each stop signal's handler before ours
_received: list[int] = []  # the first stop signal, while armed
_command = ["pipeline.train"]  # named in the lines the handler writes
_state = {"armed": False, "forced": False, "importing": False, "after": False, "reported": False}


def install(*, importing: bool = False, command: str = "pipeline.train") -> None:
    """Record stop signals from now until `take()` (main thread only; a second call is a no-op).
    `importing`: until `imported()`, a second Ctrl-C ends the process at once, with one line
    (nothing is written before the command's main starts). `command`: its name in those lines
    (pipeline.search runs its trials as pipeline.train runs in its own process)."""
    if _replaced or threading.current_thread() is not threading.main_thread():
        return
    _arm()
    _state["importing"] = importing
    _command[0] = command
    for s in STOP_SIGNALS:
        _replaced[s] = signal.signal(s, _handle)


def uninstall() -> None:
    """Put back the handlers `install()` replaced, where its own is still in (the command's end:
    a process that called main(), a notebook's, keeps no handler of ours)."""
    for s, previous in _replaced.items():
        if signal.getsignal(s) == _handle:
            signal.signal(s, previous)
    _replaced.clear()
    _received.clear()
    _state.update(armed=False, forced=False, importing=False, after=False, reported=False)


def rearm() -> None:
    """A run starts (a sweep's next job too): record again if taken, as from `install()`; what
    arrived before it (since the last fit's end, or the command's start) is kept. Nothing where
    never installed."""
    if not _replaced:
        return
    if not _state["armed"]:
        _arm()
    _state["after"] = False


def ended() -> None:
    """A fit has ended (GracefulStop, at its train end or teardown): record again, as after
    training, until the command's end or the next job's run. Passed on instead, a Ctrl-C in
    Lightning's teardown was its exit 1 with no line, a SIGTERM the default action's kill."""
    if not _replaced:
        return
    if not _state["armed"]:
        _arm(after=True)
    if threading.current_thread() is threading.main_thread():
        # Ours, not Lightning's SIGTERM handler (GracefulStop put it back), until Lightning's
        # teardown restores its originals (ours): under DDP that handler kills the other ranks
        # and broadcasts to them, and a completed run's teardown failed on it (exit 5).
        for s in STOP_SIGNALS:
            signal.signal(s, _handle)


def _arm(*, after: bool = False) -> None:
    """Record afresh: nothing received, forced or reported yet."""
    _received.clear()
    _state.update(armed=True, forced=False, after=after, reported=False)


def after_training() -> bool:
    """Whether the record is of the time after a fit's end (`ended`), not before training."""
    return _state["after"]


def mark_reported() -> None:
    """The signal recorded has been named to the user (kept: a sweep's next job stops on it)."""
    _state["reported"] = True


def unreported() -> int | None:
    """The recorded signal, where nothing has named it yet."""
    return None if _state["reported"] else received()


def _handle(signum: int, frame: FrameType | None) -> None:
    if not _state["armed"]:
        _pass_on(signum, frame)
    elif _received and _received[0] == signal.SIGINT == signum:
        _state["forced"] = True
        if _state["importing"]:  # no try of ours to catch it yet: a traceback from an import
            os.write(
                2,
                f"{_command[0]}: stopped at once by a second Ctrl-C before training started\n".encode(),
            )
            os._exit(128 + signal.SIGINT)
        raise KeyboardInterrupt  # asked twice: stop now
    elif not _received:
        _received.append(signum)
        if is_launch_rank_zero():  # a phase before training can be long (a download, a wait)
            name = signal.Signals(signum).name
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            os.write(2, f"{_command[0]}: {name} received{again}\n".encode())


def _pass_on(signum: int, frame: FrameType | None) -> None:
    """What the replaced handler would have done: call it, ignore, or the default action."""
    previous = _replaced.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # delivered again, to the default action


def imported() -> None:
    """The command's main has started: a second Ctrl-C raises KeyboardInterrupt, which it catches."""
    _state["importing"] = False


def received() -> int | None:
    """The stop signal that arrived since `install()` and before `take()`, or None."""
    return _received[0] if _state["armed"] and _received else None


def forced() -> bool:
    """Whether a second Ctrl-C (before training, or after a fit's end) raised KeyboardInterrupt."""
    return _state["forced"]


def take() -> int | None:
    """Training starts (GracefulStop listens from here): the signal recorded so far, if any; from
    now on the handler passes signals on."""
    signum = received()
    _state["armed"] = False
    return signum

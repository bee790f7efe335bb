"""Ctrl-C and SIGTERM for the commands that have nothing to save when stopped: pipeline.eval and
pipeline.bench (pipeline.train records them instead, to stop between steps: early_signals).

Without it a Ctrl-C while the command imported torch was a traceback of a hundred lines, and a
SIGTERM at any moment outside the bench's timed runs the default action's silent kill (exit
143, no line), leaving the command's output folder behind (hostile review). From `install` (the
command's first line, before torch imports) to `started()`, a stop signal ends the process at
once with one line: nothing is written before the command's main starts. From `started()` on it
raises `Stopped`, a KeyboardInterrupt naming its signal, so Lightning's loop and the command's
`except KeyboardInterrupt` take a SIGTERM as they take a Ctrl-C: one line, exit 128 + N. From
`finished()`, once the command's result is made, a stop signal is named and changes nothing
(a Ctrl-C just after the score was printed exited 130 with no line), and a second one ends the
process at once with one line. The handler stays for the interpreter's end once finished.
`stopping()`: the command stops and cleans up, and further signals are ignored.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_replaced: dict[int, Any] = {}  # installed: each stop signal's handler before ours
_state: dict[str, Any] = {"command": "", "phase": "importing", "named": False, "held": []}


class Stopped(KeyboardInterrupt):
    """A stop signal arrived while the command worked (Ctrl-C or SIGTERM alike)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def signal_of(exc: KeyboardInterrupt) -> int:
    """The stop signal behind `exc`: Stopped's, else SIGINT (Python's own KeyboardInterrupt)."""
    return exc.signum if isinstance(exc, Stopped) else signal.SIGINT


def install(command: str) -> None:
    """Handle stop signals for `command` (its name in the lines it prints), as it imports; a
    second call (main() after the module's own top line) keeps the phase it is in."""
    if _replaced or threading.current_thread() is not threading.main_thread():
        return
    _state.update(command=command, phase="importing", named=False)
    for s in STOP_SIGNALS:
        _replaced[s] = signal.signal(s, _handle)


def started() -> None:
    """The command's main runs, inside its try: a stop signal raises Stopped."""
    _state["phase"] = "working"


def finished() -> None:
    """The command's result is made: a stop signal is named and changes nothing (its printing
    and writing go on whole); a second one ends the process at once, with one line."""
    _state["phase"] = "finished"


def stopping() -> None:
    """The command stops on a signal and cleans up: later signals are ignored, so the clean-up
    runs whole (a second Ctrl-C there was a traceback, the folder left half-removed)."""
    _state["phase"] = "stopping"


@contextmanager
def held() -> Iterator[None]:
    """While a write that must be whole runs (bench.output, after its result is made): a stop
    signal waits for its end, then counts as it would have (a second Ctrl-C there ended the
    process mid-write, leaving a .partial file and no output)."""
    phase, _state["phase"] = _state["phase"], "holding"
    try:
        yield
    finally:
        _state["phase"] = phase
        waiting, _state["held"] = _state["held"], []
        for signum in waiting:
            _handle(signum, None)


@contextmanager
def command(program: str, unfinished: str) -> Iterator[None]:
    """A command's main, from `started()` to its end: a stop signal (KeyboardInterrupt or
    Stopped) is one line, `<program>: stopped by SIGx; <unfinished>`, and exit 128 + N, the
    folders the command made removed (nothing came of them); afterwards the handlers are put
    back unless its result is made."""
    from pipeline import report  # the command has imported them: nothing more to load here
    from pipeline.errors import stopped_by_signal_exit_code
    from pipeline.rundir import created_here, discard_run_dir, forget_created

    install(program)
    started()
    try:
        yield
    except KeyboardInterrupt as exc:  # while it checks, loads or works: SIGTERM too
        stopping()
        signum = signal_of(exc)
        for run_dir in created_here():
            discard_run_dir(run_dir)
        report.show_error(program, f"stopped by {signal.Signals(signum).name}; {unfinished}")
        sys.exit(stopped_by_signal_exit_code(signum))
    finally:
        uninstall(unless_finished=True)
        forget_created()


def uninstall(*, unless_finished: bool = False) -> None:
    """Put back the handlers `install()` replaced, where its own is still in; `unless_finished`:
    not once the command's result is out (it names a signal in the process's last moments)."""
    if unless_finished and _state["phase"] == "finished":
        return
    for s, previous in _replaced.items():
        if signal.getsignal(s) == _handle:
            signal.signal(s, previous)
    _replaced.clear()


def _handle(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    command, phase = _state["command"], _state["phase"]
    if phase == "importing":  # no try of the command's to catch it yet, and nothing written
        os.write(2, f"{command}: stopped by {name} as it started; nothing was done\n".encode())
        os._exit(128 + signum)
    if phase == "working":
        raise Stopped(signum)
    if phase == "stopping":
        return
    if phase == "holding":
        _state["held"].append(signum)
        return
    if not _state["named"]:  # its output, Hydra's job end, the interpreter's last moments
        _state["named"] = True
        os.write(
            2, f"{command}: {name} arrived after its work was done; it stopped nothing\n".encode()
        )
        return
    os.write(2, f"{command}: stopped at once by a second {name}; its result stands\n".encode())
    os._exit(128 + signum)  # asked twice: nothing of the command's is left to write

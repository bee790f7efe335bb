"""Stop signals in pipeline.eval and pipeline.bench (pipeline.stop_now): one line at once while
the command imports, a KeyboardInterrupt naming the signal while it works (SIGTERM was the
default action's silent kill), nothing once its result is out, the handlers put back after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pipeline import stop_now


@pytest.fixture
def installed() -> Iterator[None]:
    """stop_now installed for the test; the process's handlers as they were afterwards."""
    before = {s: signal.getsignal(s) for s in stop_now.STOP_SIGNALS}
    stop_now.install("pipeline.test")
    try:
        yield
    finally:
        stop_now.uninstall()
        assert {s: signal.getsignal(s) for s in stop_now.STOP_SIGNALS} == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_while_it_works_a_stop_signal_raises_a_keyboard_interrupt_naming_it(
    installed: None, signum: int
) -> None:
    stop_now.started()
    with pytest.raises(KeyboardInterrupt) as caught:
        os.kill(os.getpid(), signum)
    assert stop_now.signal_of(caught.value) == signum
    assert stop_now.signal_of(KeyboardInterrupt()) == signal.SIGINT  # Python's own


def test_once_finished_a_signal_is_named_and_while_stopping_ignored(
    installed: None, capfd: pytest.CaptureFixture[str]
) -> None:
    stop_now.started()
    stop_now.finished()
    os.kill(os.getpid(), signal.SIGINT)  # nothing raised: the result is made, it prints whole
    assert capfd.readouterr().err == (
        "pipeline.test: SIGINT arrived after its work was done; it stopped nothing\n"
    )
    stop_now.uninstall(unless_finished=True)  # kept for the process's last moments
    assert signal.getsignal(signal.SIGINT) == stop_now._handle
    stop_now.stopping()  # a stop's clean-up (a second Ctrl-C there was a traceback)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    assert capfd.readouterr().err == ""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_a_second_signal_once_finished_ends_the_process_at_once() -> None:
    done = run_python(
        "import os, signal, time\n"
        "from pipeline import stop_now\n"
        "stop_now.install('pipeline.eval'); stop_now.started(); stop_now.finished()\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "os.kill(os.getpid(), signal.SIGINT)\n"
        "time.sleep(30)\n"
    )
    assert done.returncode == 128 + signal.SIGINT
    assert done.stderr.splitlines() == [
        "pipeline.eval: SIGINT arrived after its work was done; it stopped nothing",
        "pipeline.eval: stopped at once by a second SIGINT; its result stands",
    ]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_while_it_imports_a_stop_signal_ends_it_at_once_with_one_line(signum: int) -> None:
    code = (
        "import os, signal, time\n"
        "from pipeline import stop_now\n"
        "stop_now.install('pipeline.eval')\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "time.sleep(30)\n"
        "print('not stopped')\n"
    )
    done = run_python(code)
    assert done.returncode == 128 + signum
    name = signal.Signals(signum).name
    assert done.stderr == f"pipeline.eval: stopped by {name} as it started; nothing was done\n"
    assert done.stdout == ""


def test_a_signal_during_a_held_write_waits_for_its_end(
    installed: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """A second Ctrl-C during bench.output's write ended the process there: a .partial file
    and no output (review). Held, it counts once the write is whole."""
    stop_now.started()
    stop_now.finished()
    with stop_now.held():
        os.kill(os.getpid(), signal.SIGINT)
        assert capfd.readouterr().err == ""  # not yet: the write goes on
    assert capfd.readouterr().err == (
        "pipeline.test: SIGINT arrived after its work was done; it stopped nothing\n"
    )

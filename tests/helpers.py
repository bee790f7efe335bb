"""What tests share: the tiny run's overrides, the real CLI as a process, run directories and
their TensorBoard scalars, an in-memory logger. Imported by tests as `from helpers import …`."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Protocol

from lightning.pytorch.loggers import Logger

# Small enough for seconds on 2 cores, big enough to train: batch 4 of 32×32 keeps layer4's
# BatchNorm at 4 values per channel. No histograms: binning ResNet18's 2 × 11.7M weights and
# gradients took 0.3 s a logged step, a sixth of such a run (test_tensorboard.py turns them on).
TINY = [
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_samples=8",
    "data.num_val_samples=4",
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=false",
    "callbacks.gradients.histogram_every_n_steps=0",
]


# The head of the guard's message: the loss that became inf or NaN, or where it stayed finite,
# the gradients (which of the two comes first at a step depends on the summation order).
DIVERGED = re.compile(r"(train/loss became \S+|the gradients overflowed or went NaN) at step \d+")


def cli_env(torch_home: Path) -> dict[str, str]:
    """The test's environment for a subprocess: an isolated TORCH_HOME, no network for torch.hub."""
    env = dict(os.environ)
    env["TORCH_HOME"] = str(torch_home)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("HYDRA_FULL_ERROR", None)
    # A closed local port: any download attempt fails at once, as offline.
    env["https_proxy"] = env["HTTPS_PROXY"] = "http://127.0.0.1:9"
    if "PYTEST_XDIST_WORKER" in os.environ:  # one worker a core: a thread each, no spinning
        env["OMP_NUM_THREADS"] = "1"
    return env


def run_cli(
    module: str,
    args: list[str],
    cwd: Path,
    torch_home: Path,
    timeout: float = 240,
    *,
    env: dict[str, str] | None = None,
    fresh_interpreter: bool = False,
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` as its own process in `cwd`, run to its end; stdout and
    stderr captured as text. Forked from a warm server that has the pipeline imported
    (tests/zygote.py); `fresh_interpreter=True` starts a new interpreter instead (the start-up
    itself under test)."""
    proc = start_cli(module, args, cwd, torch_home, env=env, fresh_interpreter=fresh_interpreter)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise subprocess.TimeoutExpired(proc.args, timeout, err) from None
    assert proc.returncode is not None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class CliProcess(Protocol):
    """What tests use of a started command: subprocess.Popen's, or a WarmProcess's."""

    args: Any
    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def communicate(self, timeout: float | None = None) -> tuple[str, str]: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


def start_cli(
    module: str,
    args: list[str],
    cwd: Path,
    torch_home: Path,
    *,
    env: dict[str, str] | None = None,
    fresh_interpreter: bool = False,
    new_session: bool = False,
) -> CliProcess:
    """`python -m <module> <args>` started in `cwd` and left running, used as subprocess.Popen
    with text stdout and stderr (poll, wait, send_signal, kill, communicate). Forked from the
    warm server unless `fresh_interpreter` (or PIPELINE_TESTS_COLD=1); `new_session`: a process
    group of its own (os.killpg(pid, …) reaches what it started)."""
    env = env if env is not None else cli_env(torch_home)
    if fresh_interpreter or os.environ.get("PIPELINE_TESTS_COLD") == "1":
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
    return _warm_server().start(module, args, cwd, env, new_session)


class WarmProcess:
    """A command forked by the warm server: its pid is a real process's, which a test may
    signal; its stdout and stderr go to files, read once it has ended."""

    def __init__(self, server: _WarmServer, args: list[str], pid: int, outputs: Path) -> None:
        self.server, self.args, self.pid, self.outputs = server, args, pid, outputs
        self.returncode: int | None = None
        weakref.finalize(self, shutil.rmtree, outputs, True)

    def poll(self) -> int | None:
        if self.returncode is None:
            status = self.server.status(self.pid, 0)
            if status is not None:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            status = self.server.status(self.pid, timeout)
            if status is None:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return (self.outputs / "stdout").read_text(), (self.outputs / "stderr").read_text()

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _WarmServer:
    """The client of tests/zygote.py: one server per pytest process, started on first use.
    Replies are filed as they come: which pid each request got, each ended child's status."""

    def __init__(self) -> None:
        server_env = cli_env(Path(tempfile.gettempdir()))
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=server_env,
            bufsize=0,
        )
        atexit.register(self.stop)
        self.requests = 0
        self.pids: dict[int, int] = {}  # request id → pid
        self.statuses: dict[int, int] = {}  # pid → wait status
        self.unread = b""

    def stop(self) -> None:
        """End the server as the tests end: it removes its socket's folder on the way out."""
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _read(self, timeout: float | None) -> None:
        """Files every reply that arrives within `timeout` (None: waits for one)."""
        out = self.process.stdout
        assert out is not None
        if not select.select([out], [], [], timeout)[0]:
            return
        chunk = os.read(out.fileno(), 1 << 16)
        if not chunk:
            raise RuntimeError(f"the test server died (exit {self.process.poll()})")
        self.unread += chunk
        while b"\n" in self.unread:
            line, self.unread = self.unread.split(b"\n", 1)
            reply = json.loads(line)
            if "status" in reply:
                self.statuses[reply["pid"]] = reply["status"]
            else:
                self.pids[reply["id"]] = reply["pid"]

    def start(
        self, module: str, args: list[str], cwd: Path, env: dict[str, str], new_session: bool
    ) -> WarmProcess:
        outputs = Path(tempfile.mkdtemp(prefix="warm-cli-"))
        request_id, self.requests = self.requests, self.requests + 1
        request = {"id": request_id, "module": module, "args": args, "cwd": str(cwd), "env": env}
        request["new_session"] = new_session
        request |= {"stdout": str(outputs / "stdout"), "stderr": str(outputs / "stderr")}
        stdin = self.process.stdin
        assert stdin is not None
        stdin.write((json.dumps(request) + "\n").encode())
        while request_id not in self.pids:
            self._read(None)
        pid = self.pids.pop(request_id)
        return WarmProcess(self, [sys.executable, "-m", module, *args], pid, outputs)

    def status(self, pid: int, timeout: float | None) -> int | None:
        """The wait status of child `pid`, once it has ended; None if it runs past `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while pid not in self.statuses:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._read(left)
        return self.statuses.pop(pid)


_server: list[_WarmServer] = []


def _warm_server() -> _WarmServer:
    if not _server or _server[0].process.poll() is not None:
        _server[:] = [_WarmServer()]
    return _server[0]


def only_run_dir(root: Path) -> Path:
    """The one run directory under root/outputs/YYYY-MM-DD/HH-MM-SS."""
    runs = [p for p in (root / "outputs").glob("*/*") if p.is_dir() and p.parent.name != "multirun"]
    assert len(runs) == 1, runs
    return runs[0]


def scalars(tensorboard_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run, read with TensorBoard's own event reader: tag → [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tensorboard_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class Recorder(Logger):
    """Keeps every log_metrics call in memory: [(step, metrics)]."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def tag(self, name: str) -> list[tuple[int | None, float]]:
        return [(step, m[name]) for step, m in self.rows if name in m]

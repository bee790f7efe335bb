"""What tests share: the tiny run's overrides, the real CLI as a process, run directories and
their TensorBoard scalars, an in-memory logger. Imported by tests as `from helpers import …`."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from lightning.pytorch.loggers import Logger

# Small enough for seconds on 2 cores, big enough to train: batch 4 of 32×32 keeps layer4's
# BatchNorm at 4 values per channel.
TINY = [
    "data.image_size=32",
    "data.batch_size=4",
    "data.num_samples=8",
    "data.num_val_samples=4",
    "trainer.max_steps=2",
    "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=false",
]


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
    """`python -m <module> <args>` as its own process in `cwd`; stdout and stderr captured as text.

    The process is forked from a warm server that has the pipeline imported (tests/zygote.py);
    `fresh_interpreter=True` starts a new interpreter instead (the start-up itself under test).
    """
    env = env if env is not None else cli_env(torch_home)
    if fresh_interpreter or os.environ.get("PIPELINE_TESTS_COLD") == "1":
        return subprocess.run(
            [sys.executable, "-m", module, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    return _warm_server().run(module, args, cwd, env, timeout)


class _WarmServer:
    """The client of tests/zygote.py: one server per pytest process, started on first use."""

    def __init__(self) -> None:
        server_env = cli_env(Path(tempfile.gettempdir()))
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("zygote.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=server_env,
            text=True,
        )
        atexit.register(self.process.kill)

    def _reply(self, timeout: float | None) -> dict[str, Any] | None:
        out = self.process.stdout
        assert out is not None
        if timeout is not None and not select.select([out], [], [], timeout)[0]:
            return None
        line = out.readline()
        if not line:
            raise RuntimeError(f"the test server died (exit {self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def run(
        self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
            request = {"module": module, "args": args, "cwd": str(cwd), "env": env}
            request |= {"stdout": str(out), "stderr": str(err)}
            stdin: IO[str] | None = self.process.stdin
            assert stdin is not None
            stdin.write(json.dumps(request) + "\n")
            stdin.flush()
            started = self._reply(None)
            assert started is not None
            finished = self._reply(timeout)
            command = [sys.executable, "-m", module, *args]
            if finished is None:
                os.kill(started["pid"], signal.SIGKILL)
                self._reply(None)
                raise subprocess.TimeoutExpired(command, timeout, err.read_text())
            code = os.waitstatus_to_exitcode(finished["status"])
            return subprocess.CompletedProcess(command, code, out.read_text(), err.read_text())


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

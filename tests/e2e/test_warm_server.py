"""The test server's stand-in (tests/warm_python.py): a warm command's own children are forked
warm, get its descriptors, its signals and give back their exit status, and die with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import cli_env, run_cli

TESTS = str(Path(__file__).parents[1])  # this file as e2e.test_warm_server, as a process sees it


def _child(how: str) -> None:
    """A child of a warm command: says whether it is warm, then does `how`."""
    if how == "sigterm":  # waits for the SIGTERM its parent sends once it has read the line below
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(3))  # before it: a race, else (-15)
    print(json.dumps({"warm": "pipeline.train" in sys.modules, "pid": os.getpid()}), flush=True)
    if how == "exit":
        sys.exit(7)
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def _parent(how: str) -> None:
    """The warm command: starts `python -m e2e.test_warm_server child how` as Lightning does."""
    command = [sys.executable, "-m", "e2e.test_warm_server", "child", how]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    said = json.loads(child.stdout.readline())  # through the descriptor the stand-in passed
    if how in ("sigterm", "kill the stand-in"):
        child.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    said["returncode"] = child.wait(timeout=30)
    if how == "kill the stand-in":  # the server kills the child it stood in for
        deadline = time.monotonic() + 10
        while Path(f"/proc/{said['pid']}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        said["child_alive"] = Path(f"/proc/{said['pid']}").exists()
    print(json.dumps(said))


@pytest.mark.parametrize(
    ("how", "returncode"),
    [
        ("exit", 7),
        ("sigkill", -signal.SIGKILL),
        ("sigterm", 3),
        ("kill the stand-in", -signal.SIGKILL),
    ],
)
def test_a_warm_commands_child_is_warm_and_ends_as_a_process_would(
    how: str, returncode: int, tmp_path: Path, torch_home: Path
) -> None:
    env = cli_env(torch_home) | {"PYTHONPATH": TESTS}
    result = run_cli("e2e.test_warm_server", ["parent", how], tmp_path, torch_home, env=env)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout.splitlines()[-1])
    assert said["warm"] is True and said["returncode"] == returncode, result.stderr
    assert not said.get("child_alive"), "the child outlived its killed stand-in"


def test_cold_children_start_real_interpreters(tmp_path: Path, torch_home: Path) -> None:
    env = cli_env(torch_home) | {"PYTHONPATH": TESTS, "PIPELINE_TESTS_COLD_CHILDREN": "1"}
    result = run_cli("e2e.test_warm_server", ["parent", "exit"], tmp_path, torch_home, env=env)
    assert result.returncode == 0, result.stderr
    said = json.loads(result.stdout.splitlines()[-1])
    assert said["warm"] is False and said["returncode"] == 7


if __name__ == "__main__":  # python -m e2e.test_warm_server parent|child HOW
    {"parent": _parent, "child": _child}[sys.argv[1]](sys.argv[2])

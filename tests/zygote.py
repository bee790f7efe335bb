"""A warm start for CLI tests: import the pipeline once, then fork one child per command.

Importing `pipeline.train` costs ~9 s of CPU here (torch, torchvision, Lightning), and the suite
runs ~150 commands: on two cores the imports alone would pass the 10-minute budget. This server
imports once; each request forks a child that becomes `python -m <module> <args>` — its own
process, cwd, environment, argv, stdin/stdout/stderr and exit status, the module run as
`__main__` by runpy as `-m` does — and only the imports are inherited. Tests that need the
interpreter's own start-up (the wheel's console script, Lightning's DDP children, torchrun)
still start real interpreters.

Protocol, one JSON object a line on stdin/stdout: a request {id, module, args, cwd, env, stdout,
stderr, new_session} (stdout and stderr: file paths); the reply {"id": I, "pid": N} once forked, and later, when
that child has ended, {"pid": N, "status": S} with its wait status. Children run side by side:
a test may start several and signal them (tests/helpers.py's `start_cli`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import select
import sys
import traceback
from typing import Any

PRELOAD = ("pipeline.train", "pipeline.eval", "pipeline.replay", "pipeline.search", "tensorboard")


def run_child(request: dict[str, Any]) -> int:
    """In the forked child: become `python -m module args`; return its exit code."""
    if request.get("new_session"):  # a process group of its own, as Popen(start_new_session=True)
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0 lives as long as the process)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # the wrappers of fds 1 and 2
    sys.argv = [request["module"], *request["args"]]
    if not hasattr(sys.modules.get(request["module"]), "__path__"):  # a package runs __main__
        sys.modules.pop(request["module"], None)  # `-m` runs a module as __main__ only
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def _fork_child(request: dict[str, Any]) -> int:
    """Fork a child that runs the request and exits; in the server, return its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_child(request)
        finally:
            atexit._run_exitfuncs()
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.flush()  # type: ignore[union-attr]
            os._exit(code)
    return pid


def serve() -> None:
    for name in PRELOAD:
        __import__(name)
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol's pipe

    def reply(message: dict[str, Any]) -> None:
        print(json.dumps(message), file=replies, flush=True)

    pending = b""
    while True:
        if select.select([0], [], [], 0.05)[0]:  # requests, read raw: no buffer hides a line
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return  # the tests' process has gone
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                reply({"id": request["id"], "pid": _fork_child(request)})
        while True:  # every child that has ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            reply({"pid": pid, "status": status})


if __name__ == "__main__":
    serve()

"""A warm start for CLI tests: import the pipeline once, then fork one child per command.

Importing `pipeline.train` costs ~9 s of CPU here (torch, torchvision, Lightning), and the suite
runs ~150 commands: on two cores the imports alone would pass the 10-minute budget. This server
imports once; each request forks a child that becomes `python -m <module> <args>` — its own
process, cwd, environment, argv, stdin/stdout/stderr and exit status, the module run as
`__main__` by runpy as `-m` does — and only the imports are inherited. Tests that need the
interpreter's own start-up (the wheel's console script, Lightning's DDP children, torchrun)
still start real interpreters.

Protocol, one JSON object a line on stdin/stdout: a request {module, args, cwd, env, stdout,
stderr} (the last two file paths); the reply {"pid": N} once forked, then {"status": S} with
the child's wait status.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import runpy
import sys
import traceback
from typing import Any

PRELOAD = ("pipeline.train", "pipeline.eval", "pipeline.replay", "tensorboard")


def run_child(request: dict[str, Any]) -> int:
    """In the forked child: become `python -m module args`; return its exit code."""
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


def serve() -> None:
    for name in PRELOAD:
        __import__(name)
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol's pipe
    for line in sys.stdin:
        request = json.loads(line)
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
        print(json.dumps({"pid": pid}), file=replies, flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": status}), file=replies, flush=True)


if __name__ == "__main__":
    serve()

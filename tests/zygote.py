"""A warm start for CLI tests: import the pipeline once, then fork one child per command.

Importing `pipeline.train` costs ~9 s of CPU here (torch, torchvision, Lightning), and the suite
runs ~150 commands: on two cores the imports alone would pass the 10-minute budget. This server
imports once; each request forks a child that becomes `python -m <module> <args>` — its own
process, cwd, environment, argv, stdin/stdout/stderr and exit status, the module run as
`__main__` by runpy as `-m` does — and only the imports are inherited.

The commands' own children are forked warm too. Lightning's DDP launcher, multiprocessing's
spawn, torchrun's agent and submitit start them as `sys.executable -m …` or `-c …`; in a warm
command sys.executable is a launcher of tests/warm_python.py, a stand-in that asks this server,
over a Unix socket, for a child with its argv, cwd, environment and file descriptors. Tests of
the interpreter's own start-up (the wheel's console script) start real interpreters.

Protocol, one JSON object a line on stdin/stdout: a request {id, module, args, cwd, env, stdout,
stderr, new_session} (stdout and stderr: file paths); the reply {"id": I, "pid": N} once
forked, and later, when that child has ended, {"pid": N, "status": S} with its wait status.
Children run side by side: a test may start several and signal them (tests/helpers.py's
`start_cli`). On the socket, a stand-in sends {module or code, args, cwd, env, fds} with its
file descriptors (SCM_RIGHTS, in batches), and gets {"pid": N}, then {"status": S}.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import multiprocessing.spawn
import os
import runpy
import select
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import traceback
import types
import warnings
from typing import Any

from lightning.fabric.utilities.rank_zero import _get_rank, rank_zero_only

from warm_python import FDS_A_MESSAGE, SERVER_ENV

PRELOAD = ("pipeline.train", "pipeline.eval", "pipeline.replay", "pipeline.search", "tensorboard")


class Server:
    """The Unix socket that stand-ins (tests/warm_python.py) ask, and the launcher that warm
    commands see as sys.executable."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="warm-server-")  # removed by serve(), not atexit:
        # forked children run the server's exit functions as they end
        self.address = os.path.join(self.folder, "socket")
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.address)
        self.listener.listen(64)
        self.launcher = os.path.join(self.folder, "python")
        stand_in = os.path.join(os.path.dirname(os.path.abspath(__file__)), "warm_python.py")
        with open(self.launcher, "w") as f:
            python, script = shlex.quote(sys.executable), shlex.quote(stand_in)
            f.write(f'#!/bin/sh\nexec {python} -S {script} "$@"\n')
        os.chmod(self.launcher, 0o755)
        self.stand_ins: dict[int, socket.socket | None] = {}  # child pid → stand-in's connection
        self.connecting: socket.socket | None = None  # a stand-in whose child is being forked

    def sockets(self) -> list[socket.socket]:
        """The server's sockets: the listener and every live stand-in's connection."""
        conns = [*self.stand_ins.values(), self.connecting]
        return [self.listener, *(c for c in conns if c is not None)]


SERVER: Server | None = None


def _install_fds(targets: list[int], received: list[int]) -> None:
    """Give the child the stand-in's file descriptors under the stand-in's numbers; stdio that
    the stand-in lacked reads and writes nothing (never the server's protocol pipes)."""
    spare = max([*targets, 2]) + 1
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, spare) for fd in received]
    for fd in received:
        os.close(fd)
    for fd, target in zip(moved, targets, strict=True):
        os.dup2(fd, target)
        os.close(fd)
    for target in (0, 1, 2):
        if target not in targets:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, target)
            os.close(null)


def _stdio_from_files(request: dict[str, Any]) -> None:
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for fd, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        os.dup2(fd, target)
        os.close(fd)


def _as_a_new_interpreter_would(request: dict[str, Any]) -> None:
    """What a new interpreter reads from its environment at start-up and the server read at
    import: the import path (the cwd for -m, then PYTHONPATH) and Lightning's rank (a DDP
    child of rank 1 is rank 1 before its Trainer says so)."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:1] = ["" if "code" in request else os.getcwd(), *path]
    rank_zero_only.rank = _get_rank() or 0


def run_child(request: dict[str, Any], received: list[int] | None = None) -> int:
    """In the forked child: become `python -m module args` (or `python -c code args`); return
    its exit code. `received`: a stand-in's file descriptors, to take under their numbers."""
    if request.get("new_session"):  # a process group of its own, as Popen(start_new_session=True)
        os.setsid()
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    assert SERVER is not None
    for sock in SERVER.sockets():
        sock.close()
    os.environ[SERVER_ENV] = SERVER.address
    sys.executable = SERVER.launcher  # what this command starts is forked warm too
    multiprocessing.spawn.set_executable(SERVER.launcher)
    if received is None:
        _stdio_from_files(request)
    else:
        _install_fds(request["fds"], received)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 (fd 0 lives as long as the process)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # the wrappers of fds 1 and 2
    _as_a_new_interpreter_would(request)
    try:
        if "code" in request:  # `python -c code args`: the code runs in a new __main__
            sys.argv = ["-c", *request["args"]]
            # A spawn re-runs the parent's main module (already imported here, unlike in a new
            # interpreter): runpy's warning about that describes the server, not the command
            warnings.filterwarnings(
                "ignore", ".* found in sys.modules after import", RuntimeWarning
            )
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(request["code"], "<string>", "exec"), main.__dict__)
            return 0
        sys.argv = [request["module"], *request["args"]]
        if not hasattr(sys.modules.get(request["module"]), "__path__"):  # a package: __main__
            sys.modules.pop(request["module"], None)  # `-m` runs a module as __main__ only
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


def _fork_child(request: dict[str, Any], received: list[int] | None = None) -> int:
    """Fork a child that runs the request and exits; in the server, return its pid."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = run_child(request, received)
        except BaseException:  # before the command ran (its cwd gone, a descriptor refused)
            traceback.print_exc()
        finally:
            atexit._run_exitfuncs()
            for stream in (sys.__stdout__, sys.__stderr__):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    stream.flush()  # type: ignore[union-attr]
            os._exit(code)
    return pid


def _read_stand_in(conn: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """A stand-in's request and its file descriptors; None if it died before it asked. Each
    read takes the descriptors that came with its bytes (a plain recv would drop them)."""
    data, received, request = b"", [], None
    try:
        while request is None or len(received) < len(request["fds"]):
            chunk, fds, _, _ = socket.recv_fds(conn, 1 << 20, FDS_A_MESSAGE + 3)
            received += fds
            if not chunk:
                raise EOFError
            data += chunk
            if request is None and b"\n" in data:
                request = json.loads(data.split(b"\n", 1)[0])
    except (OSError, ValueError, EOFError):
        for fd in received:
            os.close(fd)
        return None, []
    return request, received


def _stand_in(server: Server) -> None:
    """A stand-in (tests/warm_python.py) connected: fork its command with its descriptors. A
    stand-in that stalls (10 s) or dies on the way is dropped, not the server with it."""
    conn, _ = server.listener.accept()
    conn.settimeout(10)
    server.connecting = conn
    request, received = _read_stand_in(conn)
    if request is None:
        conn.close()
    else:
        pid = _fork_child(request, received)
        for fd in received:
            os.close(fd)
        server.stand_ins[pid] = conn
        try:
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:  # the stand-in is gone: so goes its child
            _drop(server, pid)
    server.connecting = None


def _drop(server: Server, pid: int) -> None:
    """A stand-in has gone: kill its child (not yet waited for: the pid is still this one's)."""
    os.kill(pid, signal.SIGKILL)
    conn = server.stand_ins[pid]
    if conn is not None:
        conn.close()
    server.stand_ins[pid] = None


def serve() -> None:
    global SERVER
    for name in PRELOAD:
        __import__(name)
    server = SERVER = Server()
    try:
        _serve(server)
    finally:
        for pid in server.stand_ins:  # no stand-in to answer to: its launcher is going
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(server.folder, ignore_errors=True)


def _ended_children() -> list[tuple[int, int]]:
    """(pid, wait status) of every child that has ended since the last call."""
    ended = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        ended.append((pid, status))


def _drop_killed_stand_ins(server: Server, ready: list[Any]) -> None:
    """A stand-in's connection readable means it closed: it was killed, so is its child."""
    for pid, conn in list(server.stand_ins.items()):
        if conn in ready:
            try:
                gone = not conn.recv(1)
            except OSError:  # reset: it died with a reply unread
                gone = True
            if gone:
                _drop(server, pid)


def _serve(server: Server) -> None:
    replies = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the protocol's pipe

    def reply(message: dict[str, Any]) -> None:
        print(json.dumps(message), file=replies, flush=True)

    pending = b""
    while True:
        ready = select.select([0, *server.sockets()], [], [], 0.05)[0]
        if 0 in ready:  # requests, read raw: no buffer hides a line
            chunk = os.read(0, 1 << 16)
            if not chunk:
                return  # the tests' process has gone
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                reply({"id": request["id"], "pid": _fork_child(request)})
        if server.listener in ready:
            _stand_in(server)
        _drop_killed_stand_ins(server, ready)
        for pid, status in _ended_children():
            if pid not in server.stand_ins:
                reply({"pid": pid, "status": status})
            elif (conn := server.stand_ins.pop(pid)) is not None:
                with contextlib.suppress(OSError):  # a stand-in that is gone needs no status
                    conn.sendall(json.dumps({"status": status}).encode() + b"\n")
                conn.close()


if __name__ == "__main__":
    serve()

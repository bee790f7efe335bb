"""The `python` that warm commands see as sys.executable: a child interpreter, forked warm.

Lightning's DDP launcher, multiprocessing's spawn, torchrun's agent and submitit start their
children as `sys.executable -m <module> …` or `sys.executable -c <code> …`. In a command forked
by the warm server (tests/zygote.py), sys.executable is a launcher that runs this file with
`python -S`. For a command it knows (a module of the pipeline or of the e2e tests, torchrun,
submitit's job, a multiprocessing spawn) it asks the server for a forked child that becomes
that command, with this process's argv, cwd, environment and open file descriptors (stdio, the
spawn pipe, shared tensors), and stands in for it: signals sent here go to the child, and this
process ends as the child ended (its exit code, or the same signal). If this process is
killed, the server kills the child. Anything else (another script, other interpreter options,
no server, PIPELINE_TESTS_COLD_CHILDREN=1) runs the real python. Only the imports are shared;
the child is its own process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys

WARM_PACKAGES = ("pipeline.", "e2e.")  # the pipeline's entry points, the tests' DDP scripts
WARM_MODULES = ("torch.distributed.run", "submitit.core._submit")
SPAWN = "from multiprocessing.spawn import spawn_main"
IGNORED_OPTIONS = ("-u", "-B", "-s", "-E")  # no meaning for a forked, already running process
FDS_A_MESSAGE = 250  # a sendmsg's descriptors: Linux takes at most 253 (SCM_MAX_FD)
SERVER_ENV = "PIPELINE_TESTS_WARM_SERVER"  # the server's socket, set in every warm command
COLD_ENV = "PIPELINE_TESTS_COLD_CHILDREN"  # "1": this command's children start real interpreters
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def request_for(argv: list[str]) -> dict[str, object] | None:
    """The server request for `python <argv>`, or None where the real python must run it."""
    i = 0
    while i < len(argv) and argv[i] in IGNORED_OPTIONS:
        i += 1
    if i + 1 >= len(argv):
        return None
    option, target, rest = argv[i], argv[i + 1], argv[i + 2 :]
    if option == "-m" and (target.startswith(WARM_PACKAGES) or target in WARM_MODULES):
        return {"module": target, "args": rest}
    if option == "-c" and target.startswith(SPAWN):
        return {"code": target, "args": rest}
    return None


def open_fds(keep_out: int) -> list[int]:
    """This process's open file descriptors, the server's socket left out."""
    fds = []
    for name in os.listdir("/proc/self/fd"):  # lists the listing's own descriptor, closed since
        fd = int(name)
        try:
            os.fstat(fd)
        except OSError:
            continue
        if fd != keep_out:
            fds.append(fd)
    return sorted(fds)


class Forwarder:
    """Signals to this process, passed on to the child: queued until its pid is known (a
    SIGTERM that comes first must not kill the stand-in and leave the child a SIGKILL), and
    dropped once it has ended."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.queued: list[int] = []
        for sig in FORWARDED:
            signal.signal(sig, self.receive)

    def receive(self, sig: int, _frame: object) -> None:
        if self.pid is None:
            self.queued.append(sig)
        else:
            with contextlib.suppress(ProcessLookupError):  # already ended (and reaped)
                os.kill(self.pid, sig)

    def start(self, pid: int) -> None:
        self.pid = pid
        for sig in self.queued:
            self.receive(sig, None)


def stand_in(conn: socket.socket, request: dict[str, object], forwarder: Forwarder) -> int:
    """Hand the command to the server; forward signals to the child; its wait status."""
    fds = open_fds(conn.fileno())
    request |= {"fds": fds}
    # A DDP spawn passes a descriptor a shared tensor (~130 for ResNet18): sent in batches
    first, rest = fds[:FDS_A_MESSAGE], fds[FDS_A_MESSAGE:]
    socket.send_fds(conn, [json.dumps(request).encode() + b"\n"], first)
    for i in range(0, len(rest), FDS_A_MESSAGE):
        socket.send_fds(conn, [b"."], rest[i : i + FDS_A_MESSAGE])
    replies = conn.makefile("rb")
    reply = replies.readline()
    if reply:
        forwarder.start(json.loads(reply)["pid"])
        reply = replies.readline()
    if not reply:
        print("warm_python: the test server went away", file=sys.stderr)
        return 1 << 8
    return int(json.loads(reply)["status"])


def connected(address: str | None) -> socket.socket | None:
    """A connection to the server at `address`, or None where there is none to reach."""
    if not address:
        return None
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(address)
    except OSError:
        conn.close()
        return None
    return conn


def main() -> None:
    argv = sys.argv[1:]
    request = None if os.environ.get(COLD_ENV) == "1" else request_for(argv)
    forwarder = Forwarder()  # before the server hears of the command: no signal lost between
    conn = connected(os.environ.get(SERVER_ENV)) if request is not None else None
    if conn is None or request is None:  # exec resets the forwarder's handlers
        real = sys.executable  # this file runs under the real python (the launcher's `python -S`)
        os.execv(real, [real, *argv])
    request |= {"cwd": os.getcwd(), "env": dict(os.environ)}
    status = stand_in(conn, request, forwarder)
    if os.WIFSIGNALED(status):  # end as the child ended: by the same signal
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()

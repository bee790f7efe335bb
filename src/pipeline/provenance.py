"""What produced a run: the command, the code's git commit, the library versions, the machine.

Written as `run.json` into the run directory once training starts (callbacks/provenance.py),
and shown on TensorBoard's Text tab as `run`.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = ("torch", "torchvision", "lightning", "hydra-core", "omegaconf", "tensorboard")


def git_state(directory: Path) -> dict[str, Any] | None:
    """The commit checked out in `directory` and whether its work tree has changes; None when
    it is not inside a git repository (or git is missing)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(directory), *args],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def versions() -> dict[str, str | None]:
    """Python's and the libraries' versions, CUDA's and cuDNN's (None without them)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["cuda"] = torch.version.cuda
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    found["cudnn"] = str(cudnn) if cudnn is not None else None
    return found


def gpus() -> list[str]:
    """The names of the GPUs this process sees."""
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def provenance(command: list[str], directory: Path) -> dict[str, Any]:
    """Everything run.json records about one start of a run."""
    names = gpus()
    return {
        "command": command,
        "cwd": str(directory),
        "git": git_state(directory),
        "versions": versions(),
        "host": socket.gethostname(),
        "executable": sys.executable,
        "gpus": {"count": len(names), "names": names},
    }

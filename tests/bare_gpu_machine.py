"""A pytest plugin (`-p bare_gpu_machine`), or a module to import first, that makes this Python
look like a bare GPU machine's: the packages the project's extras bring and `make gpu-check` does
not carry cannot be found or imported, as there; with BARE_GPU_MACHINE_BEFORE_INSTALL=1 in the
environment, nor can those it carries in wheels/ (hydra-core, omegaconf and google-crc32c), as
before gpu-check has installed them.

The device's image (the device tool's KINDS.md: torch, lightning, tensorboard, pytest,
pytest-xdist, pytest-timeout, hypothesis, numpy, rich, pyyaml …) has none of these.
"""

from __future__ import annotations

import os
from importlib.machinery import ModuleSpec, PathFinder
from typing import Any

NOT_ON_A_BARE_GPU_MACHINE = frozenset(
    {"optuna", "optuna_integration", "optuna_dashboard", "sqlalchemy", "alembic", "mlflow",
     "submitit", "hydra_plugins", "ruff", "mypy", "hatchling"}
)  # fmt: skip

CARRIED = frozenset({"hydra", "omegaconf", "antlr4", "google_crc32c"})
HIDDEN = NOT_ON_A_BARE_GPU_MACHINE | (
    CARRIED if os.environ.get("BARE_GPU_MACHINE_BEFORE_INSTALL") == "1" else frozenset()
)

_find_spec = PathFinder.find_spec


def _find_spec_unless_absent(
    fullname: str, path: Any = None, target: Any = None
) -> ModuleSpec | None:
    """PathFinder's search, which finds nothing of those packages: importlib.util.find_spec
    answers None and an import raises ModuleNotFoundError, as where they are not installed."""
    if fullname.partition(".")[0] in HIDDEN:
        return None
    return _find_spec(fullname, path, target)


PathFinder.find_spec = _find_spec_unless_absent  # type: ignore[method-assign]

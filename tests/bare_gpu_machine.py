"""A pytest plugin (`-p bare_gpu_machine`) that makes this Python look like a bare GPU machine's:
the packages the project's extras bring and `make gpu-check` does not carry (wheels/ holds
hydra-core, omegaconf and google-crc32c) cannot be found or imported, as there.

The device's image (the device tool's KINDS.md: torch, lightning, tensorboard, pytest,
pytest-xdist, pytest-timeout, hypothesis, numpy, rich, pyyaml …) has none of these.
"""

from __future__ import annotations

from importlib.machinery import ModuleSpec, PathFinder
from typing import Any

NOT_ON_A_BARE_GPU_MACHINE = frozenset(
    {"optuna", "optuna_integration", "optuna_dashboard", "sqlalchemy", "alembic", "mlflow",
     "submitit", "hydra_plugins", "ruff", "mypy", "hatchling"}
)  # fmt: skip

_find_spec = PathFinder.find_spec


def _find_spec_unless_absent(
    fullname: str, path: Any = None, target: Any = None
) -> ModuleSpec | None:
    """PathFinder's search, which finds nothing of those packages: importlib.util.find_spec
    answers None and an import raises ModuleNotFoundError, as where they are not installed."""
    if fullname.partition(".")[0] in NOT_ON_A_BARE_GPU_MACHINE:
        return None
    return _find_spec(fullname, path, target)


PathFinder.find_spec = _find_spec_unless_absent  # type: ignore[method-assign]

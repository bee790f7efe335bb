"""Shared helpers: run the real CLI as a subprocess, find its run directory, read its events."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
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
    return env


def run_cli(
    module: str, args: list[str], cwd: Path, torch_home: Path, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> <args>` in `cwd`; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=cli_env(torch_home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


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


@pytest.fixture
def torch_home(tmp_path: Path) -> Path:
    """An empty TORCH_HOME: nothing cached, nothing downloadable."""
    home = tmp_path / "torch_home"
    home.mkdir()
    return home


@pytest.fixture
def fake_hub_weights(torch_home: Path) -> Iterator[Path]:
    """A ResNet18 state dict fabricated at torchvision's cache path, so weights=DEFAULT loads it."""
    from torchvision.models import resnet18

    torch.manual_seed(123)
    path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    torch.save(resnet18().state_dict(), path)
    yield path


# What makes a test end-to-end: it starts the real CLI or real processes, or fits a Trainer.
E2E_WORDS = ("run_cli", "subprocess", "Popen", ".fit(", "build_trainer", "Trainer(", "mp.spawn")
E2E_FIXTURES = {"torch_home", "run_dir", "server"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark end-to-end tests `e2e`, so `make test-fast` (-m 'not e2e') runs the unit tier alone."""
    for item in items:
        function = getattr(item, "function", None)
        source = inspect.getsource(function) if function is not None else ""
        uses = set(getattr(item, "fixturenames", ()))
        if any(word in source for word in E2E_WORDS) or uses & E2E_FIXTURES:
            item.add_marker(pytest.mark.e2e)


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

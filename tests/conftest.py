"""Fixtures and the e2e marker; the helpers tests import live in tests/helpers.py."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

if "PYTEST_XDIST_WORKER" in os.environ:  # make test: a worker a core, a thread each, no spinning
    torch.set_num_threads(1)


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

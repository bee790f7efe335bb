"""Fixtures and the e2e marker; the helpers tests import live in tests/helpers.py."""

from __future__ import annotations

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


# The longest tests (--durations, two cores), started first: under `pytest -n 2` a long one left
# for last would run alone on one core at the end.
LONGEST_FIRST = (
    "e2e/test_speed_knobs.py::test_compiled_run",
    "e2e/test_bench.py::test_bench_command",
    "e2e/test_ddp.py",
    "e2e/test_search.py",
    "e2e/test_wheel.py",
    "e2e/test_resume.py",
    "e2e/test_mistakes.py",
)


def _start_order(item: pytest.Item) -> int:
    node = item.nodeid.removeprefix("tests/")
    return next((i for i, p in enumerate(LONGEST_FIRST) if node.startswith(p)), len(LONGEST_FIRST))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ `e2e` (make test-fast runs tests/unit/ alone); the
    longest start first."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=_start_order)

"""Fixtures and the e2e marker; the helpers tests import live in tests/helpers.py."""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# Test files that need an extra a bare GPU machine lacks (make gpu-check collects every file
# there, and one import error stops the whole run); make test installs them all.
collect_ignore = [] if importlib.util.find_spec("optuna") else ["e2e/test_search.py"]

if "PYTEST_XDIST_WORKER" in os.environ:  # make test: a worker a core, a thread each, no spinning
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reaches the network, or the user's torch.hub cache: the config check fetches
    model.weights=DEFAULT (a fuzzed command line can name it). A closed local port as the proxy
    fails a download at once; subprocesses get the same through tests/helpers.cli_env."""
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "offline_torch_home"))


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


# The longest tests (--durations, two cores), longest first: started first, and dealt in turn
# to the workers. pytest-xdist hands each worker a contiguous share of the list and steals from
# the ends of those shares, so a long test left for last runs alone on one core at the end, and
# long tests all in the first share would run one after another on one worker.
LONGEST_FIRST = (
    "e2e/test_speed_knobs.py::test_compiled_run",
    "e2e/test_replay.py::test_the_defaults_divergence",
    "e2e/test_bench.py::test_bench_command",
    "e2e/test_gpu_check.py::test_the_gpu_tests_collect",
    "e2e/test_resume.py::test_2k",
    "unit/test_collectives.py::test_the_reductions_over_processes",
    "e2e/test_search.py::test_killed",
    "e2e/test_train_cli.py::test_default_run",
    "e2e/test_mistakes.py::test_keep_last_k",
    "e2e/test_wheel.py",
    "e2e/test_train_cli.py::test_cpu_precisions",
    "e2e/test_search.py::test_two_processes",
    "e2e/test_ddp.py::test_ddp_cpu_divergence",
    "e2e/test_ddp.py::test_multirun",
    "e2e/test_ddp.py::test_a_signal_to_one_rank",
    "unit/test_collectives.py::test_the_timed_checkpoint",
    "e2e/test_train_cli.py::test_each_optimizer",
    "e2e/test_search.py",
    "e2e/test_mistakes.py",
    "e2e/test_ddp.py",
    "e2e/test_resume.py",
)


def _start_order(item: pytest.Item) -> int:
    node = item.nodeid.removeprefix("tests/")
    return next((i for i, p in enumerate(LONGEST_FIRST) if node.startswith(p)), len(LONGEST_FIRST))


# Modules whose tests share a module-scoped run: kept whole and early in one share (a worker
# that runs some of them computes the run for itself; xdist steals from the ends of shares).
SHARED_RUNS = ("e2e/test_loggers.py", "e2e/test_tensorboard.py")


def _shares_a_run(item: pytest.Item) -> bool:
    return item.nodeid.removeprefix("tests/").startswith(SHARED_RUNS)


def dealt(items: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """`items` (longest first) reordered so each of `workers` contiguous shares, sized as xdist
    sizes them, starts with every `workers`-th long test, then a whole module of SHARED_RUNS in
    turn, the others filling it in order."""
    long = [i for i in items if _start_order(i) < len(LONGEST_FIRST)]
    modules: dict[str, list[pytest.Item]] = {}
    for i in items:
        if _shares_a_run(i):
            modules.setdefault(i.nodeid.split("::")[0], []).append(i)
    grouped = list(modules.values())
    rest = iter(i for i in items if _start_order(i) == len(LONGEST_FIRST) and not _shares_a_run(i))
    shares, left = [], len(items)
    for w in range(workers):
        size = left // (workers - w)
        left -= size
        share = [*long[w::workers], *(i for group in grouped[w::workers] for i in group)]
        shares += [*share, *itertools.islice(rest, max(0, size - len(share)))]
    return [*shares, *rest]  # a share may run short where an earlier one overflowed its size


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ `e2e` (make test-fast runs tests/unit/ alone); the
    longest start first, spread over the workers."""
    for item in items:
        if "e2e" in item.path.parts:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=_start_order)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and len(items) >= workers:
        items[:] = dealt(items, workers)

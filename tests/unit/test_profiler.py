"""`profiler=torch|simple` through the real CLI: what lands in <run>/profile/ (issue 15, item 3)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.cli import preflight
from pipeline.config import validate
from pipeline.profiling import NoProfiler, lightning_profiler


def test_the_trainers_profiler_argument_belongs_to_the_group() -> None:
    problems = preflight("train", ["trainer.profiler=simple"], False, validate)[1]
    assert problems == [
        "trainer.profiler is set by the pipeline; use profiler=torch|simple|none instead"
    ]


def test_without_a_profiler_the_trainer_gets_one_that_costs_nothing(tmp_path: Path) -> None:
    """Lightning enters its profiler's profile() around every hook of every callback (~145 times a
    step here); its pass-through one builds a context manager each time, the pipeline's hands back
    one that does nothing."""
    from lightning.pytorch.profilers import PassThroughProfiler, SimpleProfiler

    none = lightning_profiler("none", tmp_path)
    assert isinstance(none, PassThroughProfiler)
    context = none.profile("[Callback]GracefulStop.on_train_batch_start")
    assert context is none.profile("run_training_batch")  # nothing made a call
    with context, context:
        pass
    assert isinstance(lightning_profiler("simple", tmp_path), SimpleProfiler)
    assert isinstance(lightning_profiler("torch", tmp_path), NoProfiler)  # a callback does that


def test_on_cuda_the_memory_history_keeps_python_frames_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch symbolizes C++ frames when the snapshot is dumped: minutes for a run's allocations
    (torchtitan measured ~461 s against ~4 s), past gpu-check's 90 s for its profiled run."""
    from types import SimpleNamespace

    from pipeline import profiling
    from pipeline.profiling import TorchProfile

    recorded: list[dict[str, object]] = []
    monkeypatch.setattr(torch.cuda.memory, "_record_memory_history",
                        lambda **kwargs: recorded.append(kwargs))  # fmt: skip
    monkeypatch.setattr(profiling, "profile", lambda **kwargs: SimpleNamespace(start=lambda: None))
    callback = TorchProfile(profile_dir=tmp_path, skip_first=1, warmup=1, active=1, row_limit=5,
                            cuda=True)  # fmt: skip
    callback.on_train_start(SimpleNamespace(is_global_zero=True, global_step=0), None)  # type: ignore[arg-type]
    assert recorded == [{"max_entries": profiling.MEMORY_HISTORY_ENTRIES, "stacks": "python"}]

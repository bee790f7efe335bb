"""perf/gpu_mem_*: the allocator's statistics, on CUDA runs only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import TINY, only_run_dir, run_cli, scalars
from pipeline.callbacks.gpu_memory import GpuMemory

TAGS = {"perf/gpu_mem_allocated_gb", "perf/gpu_mem_peak_gb", "perf/gpu_mem_reserved_gb",
        "perf/gpu_alloc_retries"}  # fmt: skip


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_figures_reach_tensorboard_at_the_logging_steps(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, accumulate: int
) -> None:
    """On a CPU run with the allocator's statistics faked: the callback's path to the loggers,
    once a logged step also when its batch is accumulated over micro-batches."""
    from pipeline import build
    from pipeline.cli import compose

    monkeypatch.setattr(torch.cuda, "memory_stats", lambda device: {"num_alloc_retries": 3})
    overrides = ["trainer.max_steps=4", "trainer.log_every_n_steps=2"]
    cfg = compose("train", [*TINY, *overrides, f"trainer.accumulate_grad_batches={accumulate}"])
    module = build.build_module(cfg)
    trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=[GpuMemory()])
    trainer.fit(module, datamodule=build.build_datamodule(cfg))
    logged = scalars(tmp_path / "tensorboard")
    assert set(logged) >= TAGS
    retries = logged["perf/gpu_alloc_retries"]
    assert [step for step, _ in retries] == [step for step, _ in logged["perf/images_per_sec"]]
    assert [step for step, _ in retries] == [1, 3]  # once a logged step (Lightning counts from 0)
    assert [value for _, value in retries] == [3.0, 3.0]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_run_writes_gpu_memory_on_logging_steps_and_its_peak(
    tmp_path: Path, torch_home: Path
) -> None:
    args = [*TINY, "device=gpu", "loss=mse", "trainer.max_steps=4", "trainer.log_every_n_steps=2"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    logged = scalars(run / "tensorboard")
    assert set(logged) >= TAGS
    steps = [step for step, _ in logged["perf/gpu_mem_peak_gb"]]
    assert steps == [step for step, _ in logged["perf/images_per_sec"]] != []  # logging steps
    assert all(0 < value < 200 for _, value in logged["perf/gpu_mem_peak_gb"])
    assert "peak GPU memory held by tensors:" in (run / "train.log").read_text()

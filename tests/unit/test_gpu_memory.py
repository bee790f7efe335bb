"""perf/gpu_mem_*: the allocator's statistics, on CUDA runs only."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.callbacks.gpu_memory import GpuMemory, gpu_memory_figures


def test_figures_come_from_the_allocator_statistics_in_gb() -> None:
    stats = {
        "allocated_bytes.all.current": 3 * 2**29,
        "allocated_bytes.all.peak": 5 * 2**30,
        "reserved_bytes.all.current": 6 * 2**30,
        "num_alloc_retries": 2,
        "active_bytes.all.current": 7,  # not reported
    }
    assert gpu_memory_figures(stats) == {
        "perf/gpu_mem_allocated_gb": 1.5,
        "perf/gpu_mem_peak_gb": 5.0,
        "perf/gpu_mem_reserved_gb": 6.0,
        "perf/gpu_alloc_retries": 2.0,
    }
    assert set(gpu_memory_figures({}).values()) == {0.0}  # before CUDA allocated anything


def test_only_cuda_runs_log_gpu_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipeline import build
    from pipeline.cli import compose

    cfg = compose("train", ["device=cpu"])
    assert not any(isinstance(c, GpuMemory) for c in build.build_callbacks(cfg, tmp_path))
    monkeypatch.setattr(build, "uses_cuda", lambda cfg: True)
    assert sum(isinstance(c, GpuMemory) for c in build.build_callbacks(cfg, tmp_path)) == 1

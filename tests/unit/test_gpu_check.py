"""`make gpu-check`: without a GPU it prints what it would run and exits 0."""

from __future__ import annotations

import importlib.util

import pytest

from pipeline.gpu_check import bench_summary, install_command


def test_what_a_bare_gpu_machine_lacks_comes_from_the_carried_wheels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert install_command("python3") is None  # everything is installed here
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "hydra" else real(name)
    )
    assert install_command("python3") == [
        "python3", "-m", "pip", "install", "--no-index", "--find-links", "wheels", "hydra-core"
    ]  # fmt: skip


def test_a_bench_summary_names_the_figures_the_targets_are_about() -> None:
    figures = {
        "images_per_sec": {"pipeline": 10240.4, "plain": 10500.0, "naive": 4100.0},
        "pipeline_over_plain": 0.9753,
        "pipeline_over_naive": 2.4977,
        "data": {"make_us_per_image": 0.41, "share_of_step": 0.0042},
        "peak_memory_mb": {"pipeline": 12288.0},
    }
    assert bench_summary("bench 224×224", figures) == (
        "bench 224×224: pipeline 10240 images/s, plain 10500, naive 4100; pipeline/plain 0.975, "
        "pipeline/naive 2.498; data 0.4 µs an image, 0.42% of a step; peak 12.00 GB"
    )
    figures["model_tflops_per_sec"] = {"pipeline": 111.46}  # 3 × 3.63 GFLOPs × 10240 images/s
    assert bench_summary("bench 224×224", figures).startswith(
        "bench 224×224: pipeline 10240 images/s (111.5 model TFLOP/s), plain 10500, naive 4100;"
    )

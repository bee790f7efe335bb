"""The data path alone: µs to make an image of the run's batch on its device (`make_batch`),
against the numpy path it replaced (kept here only to measure against)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch

from pipeline.bench.clock import sync
from pipeline.data import SyntheticDataModule


def numpy_reference_images(
    indices: range, *, seed: int, image_size: int, channels: int
) -> torch.Tensor:
    """The data path make_batch replaced, kept here only to measure against: one numpy PCG64
    stream per training sample, seeded by SeedSequence([seed, split, index]), float32 draws,
    one sample at a time (as the DataLoader called it), stacked as its collate did."""
    shape = (channels, image_size, image_size)
    images = [
        torch.from_numpy(
            np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0, i]))).random(
                shape, dtype=np.float32
            )
        )
        for i in indices
    ]
    return torch.stack(images)  # (B, C, H, W)


def time_data(datamodule: SyntheticDataModule, device: torch.device, rounds: int) -> dict[str, Any]:
    """µs per image of the run's batch: make_batch on the run's device as the run makes it
    (synchronized; `compiled` says whether data.compile compiled it), the numpy path on this
    process's CPU, and, where the run compiles, the eager hash too; interleaved over `rounds`,
    medians. The compile happens in a warm-up call, outside the timing."""
    batch = datamodule.batch_size
    indices = torch.arange(batch)

    def run_path() -> object:
        return datamodule.samples(indices, "train", device)

    def eager() -> object:
        return datamodule.make(indices, "train", device, compiled=False)

    def numpy_path() -> object:
        return numpy_reference_images(range(batch), seed=datamodule.seed,
                                      image_size=datamodule.image_size, channels=datamodule.channels)  # fmt: skip

    run_path()  # warm-up: the compile, the CUDA context, kernel caches
    compiled = datamodule.compiles(device)  # after it: a failed compile made it eager
    paths = {"make": run_path, "numpy": numpy_path} | ({"eager": eager} if compiled else {})
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, make in paths.items():
            make()  # untimed: the allocator as a run's every step finds it, after the same call
            sync(device)
            start = time.perf_counter()
            make()
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    us = {name: statistics.median(t) / batch * 1e6 for name, t in seconds.items()}
    figures = {
        "image_size": datamodule.image_size,
        "batch_size": batch,
        "device": str(device),
        "compiled": compiled,
        "make_us_per_image": us["make"],
        "numpy_us_per_image": us["numpy"],
        "make_over_numpy_speedup": us["numpy"] / us["make"],
    }
    if "eager" in us:
        figures |= {
            "eager_us_per_image": us["eager"],
            "make_over_eager_speedup": us["eager"] / us["make"],
        }
    return figures

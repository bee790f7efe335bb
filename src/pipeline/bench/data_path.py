"""The data path alone: µs to make an image of the run's batch on its device (`make_batch`),
against the numpy path it replaced (kept here only to measure against)."""

from __future__ import annotations

import resource
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


CALLS_A_ROUND = 3


def page_faults() -> int:
    """Minor page faults of this process so far: pages the kernel mapped in at first touch."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_data(datamodule: SyntheticDataModule, device: torch.device, rounds: int) -> dict[str, Any]:
    """µs per image of the run's batch: make_batch on the run's device as the run makes it
    (synchronized; `compiled` says whether data.compile compiled it), the numpy path on this
    process's CPU, and, where the run compiles, the eager hash too; interleaved over `rounds`,
    medians. The compile happens in a warm-up call, outside the timing.

    Each round times CALLS_A_ROUND calls of a path in a row, after an untimed one: a run's
    steady state, where each step's batch takes the memory the last one freed. One timed call
    right after another path (whose frees let the C library trim its heap) paid the kernel's
    page faults for the whole fresh batch in some rounds and not in others (19 MB, ~4,700
    faults, ~4 ms at 224×224 batch 32, more than the making itself), while a training run
    makes its batches without faults from its third step. Page faults a batch are in the
    figures, for each path."""
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
    faults: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(rounds):
        for name, make in paths.items():
            make()  # untimed: the allocator as a run's every step finds it, after the same call
            sync(device)
            faults_before, start = page_faults(), time.perf_counter()
            for _ in range(CALLS_A_ROUND):
                make()
            sync(device)
            seconds[name].append((time.perf_counter() - start) / CALLS_A_ROUND)
            faults[name].append((page_faults() - faults_before) / CALLS_A_ROUND)
    us = {name: statistics.median(t) / batch * 1e6 for name, t in seconds.items()}
    figures = {
        "image_size": datamodule.image_size,
        "batch_size": batch,
        "device": str(device),
        "compiled": compiled,
        "make_us_per_image": us["make"],
        "numpy_us_per_image": us["numpy"],
        "make_over_numpy_speedup": us["numpy"] / us["make"],
        "page_faults_per_batch": {name: statistics.median(f) for name, f in faults.items()},
    }
    if "eager" in us:
        figures |= {
            "eager_us_per_image": us["eager"],
            "make_over_eager_speedup": us["eager"] / us["make"],
        }
    return figures

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
    """µs per image of the run's batch: make_batch on the run's device (synchronized) and the
    numpy path on this process's CPU, interleaved over `rounds`, medians."""
    batch = datamodule.batch_size
    indices = torch.arange(batch)
    make_s, numpy_s = [], []
    datamodule.samples(indices, "train", device)  # warm-up: CUDA context, kernel caches
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        datamodule.samples(indices, "train", device)
        sync(device)
        make_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        numpy_reference_images(range(batch), seed=datamodule.seed,
                               image_size=datamodule.image_size, channels=datamodule.channels)  # fmt: skip
        numpy_s.append(time.perf_counter() - start)
    make_us, numpy_us = (statistics.median(t) / batch * 1e6 for t in (make_s, numpy_s))
    return {
        "image_size": datamodule.image_size,
        "batch_size": batch,
        "device": str(device),
        "make_us_per_image": make_us,
        "numpy_us_per_image": numpy_us,
        "make_over_numpy_speedup": numpy_us / make_us,
    }

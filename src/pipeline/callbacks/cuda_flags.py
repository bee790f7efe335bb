"""CUDA speed settings, applied in every training process (DDP may spawn them) for one run.

cudnn_benchmark: cuDNN times its convolution algorithms on the first batch of each shape and
keeps the fastest (every batch here has one shape). tf32: null keeps torch's defaults (TF32
convolutions, full-fp32 matmuls); true makes both TF32, false neither. Only on CUDA. The flags
are process-wide, so a run puts back what it found when it ends: a later run in the process (a
sweep's next job, the bench's next variant) starts from its own settings, not this run's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import lightning.pytorch as pl
import torch

Flags = tuple[bool, bool, bool]  # cudnn.benchmark, cuda.matmul.allow_tf32, cudnn.allow_tf32
TORCH_DEFAULTS: Flags = (False, False, True)


def flags_for(*, cudnn_benchmark: bool, tf32: bool | None) -> Flags:
    """The three switches for the config's two keys; tf32=null leaves torch's defaults."""
    if tf32 is None:
        return (cudnn_benchmark, TORCH_DEFAULTS[1], TORCH_DEFAULTS[2])
    return (cudnn_benchmark, tf32, tf32)


def current_flags() -> Flags:
    return (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


def set_flags(flags: Flags) -> None:
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    ) = flags


@contextmanager
def scoped_flags(flags: Flags) -> Iterator[None]:
    """`flags` inside the block; what they were, after it."""
    saved = current_flags()
    set_flags(flags)
    try:
        yield
    finally:
        set_flags(saved)


class CudaFlags(pl.Callback):
    def __init__(self, *, cudnn_benchmark: bool, tf32: bool | None) -> None:
        self.flags = flags_for(cudnn_benchmark=cudnn_benchmark, tf32=tf32)
        self._saved: Flags | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cuda":
            self._saved = current_flags()
            set_flags(self.flags)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._saved is not None:
            set_flags(self._saved)
            self._saved = None

"""CUDA speed settings, applied in every training process (DDP may spawn them).

cudnn_benchmark: cuDNN times its convolution algorithms on the first batch of each shape and
keeps the fastest (every batch here has one shape). tf32: null keeps torch's defaults (TF32
convolutions, full-fp32 matmuls); true makes both TF32, false neither. Only on CUDA.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch


def apply_cuda_flags(*, cudnn_benchmark: bool, tf32: bool | None) -> None:
    torch.backends.cudnn.benchmark = cudnn_benchmark
    if tf32 is not None:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32


class CudaFlags(pl.Callback):
    def __init__(self, *, cudnn_benchmark: bool, tf32: bool | None) -> None:
        self.cudnn_benchmark = cudnn_benchmark
        self.tf32 = tf32

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.strategy.root_device.type == "cuda":
            apply_cuda_flags(cudnn_benchmark=self.cudnn_benchmark, tf32=self.tf32)

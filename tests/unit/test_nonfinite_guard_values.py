"""The guard in a real Trainer, on a module of one weight whose gradient is whatever the test
sets: it stops on a gradient value that is inf or NaN, in either check, and not on finite
values whose norm overflows the precision (a 16-true gradient norm past 65504 read as
divergence while every value was finite)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.callbacks import NonFiniteGuard
from pipeline.errors import DivergenceError


class _Gradient(pl.LightningModule):
    """loss = Σ w · g: the gradient is `g` itself, whatever the weights; the loss 0 (w = 0)."""

    def __init__(self, gradient: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(gradient)))
        self.register_buffer("gradient", gradient)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return (self.weight * self.gradient).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0, fused=True)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1)


def _fit(gradient: Tensor, *, precision: str, deferred: bool, root: Path) -> int:
    """Trains 6 steps; the steps taken, or raises DivergenceError."""
    guard = NonFiniteGuard(mode="raise", loss_name="mse", checkpoint_path=None, deferred=deferred)
    trainer = pl.Trainer(
        accelerator="cpu", precision=precision, max_steps=6, callbacks=[guard], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=root,  # where divergence.json goes
    )  # fmt: skip
    trainer.fit(_Gradient(gradient))
    return trainer.global_step


@pytest.mark.parametrize("deferred", [False, True], ids=["at_once", "deferred"])
@pytest.mark.parametrize(
    ("precision", "largest"),
    [("16-true", 6e4), ("32-true", 3e38), ("bf16-true", 3e38), ("64-true", 1e300)],
)
def test_finite_gradients_whose_norm_overflows_train_on_and_inf_or_nan_stops(
    precision: str, largest: float, deferred: bool, tmp_path: Path
) -> None:
    # Every value finite in the precision, their norm past its largest: not divergence.
    assert (
        _fit(
            torch.full((64,), largest, dtype=torch.float64),
            precision=precision,
            deferred=deferred,
            root=tmp_path,
        )
        == 6
    )
    for bad in (math.inf, -math.inf, math.nan):
        gradient = torch.zeros(64)
        gradient[37] = bad
        with pytest.raises(DivergenceError, match="at step 0"):
            _fit(gradient, precision=precision, deferred=deferred, root=tmp_path)

"""The guard in a real Trainer, on a module of one weight whose gradient is whatever the test
sets: it stops on a gradient value that is inf or NaN, in either check, and not on finite
values whose norm overflows the precision (a 16-true gradient norm past 65504 read as
divergence while every value was finite)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from pipeline.callbacks import NonFiniteGuard
from pipeline.errors import DivergenceError


class _Planted(torch.autograd.Function):
    """A loss of 0 whose gradient with respect to `weight` is `gradient`, whatever it holds: the
    loss stays finite where the gradient is not (Σ w · g with w = 0 is NaN there), so only the
    gradients' check can stop the step."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor, gradient: Tensor) -> Tensor:
        ctx.save_for_backward(gradient)
        return weight.sum() * 0

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        (gradient,) = ctx.saved_tensors
        return gradient.clone(), None


class _Gradient(pl.LightningModule):
    """loss 0, finite; the weight's gradient is `g` itself, in the weight's dtype (`g` is not a
    buffer: the guard checks the module's buffers too)."""

    def __init__(self, gradient: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(len(gradient)))
        self.planted = gradient

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return cast(Tensor, _Planted.apply(self.weight, self.planted.to(self.weight)))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0, fused=True)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(TensorDataset(torch.zeros(8, 1)), batch_size=1)


def _fit(
    gradient: Tensor, *, precision: str, deferred: bool, root: Path, log_every: int = 50
) -> int:
    """Trains 6 steps; the steps taken, or raises DivergenceError. Logging every step, the check
    reads the gradients' norms (taken for divergence.json) in their place, deferred or not."""
    guard = NonFiniteGuard(mode="raise", loss_name="mse", checkpoint_path=None, deferred=deferred)
    trainer = pl.Trainer(
        accelerator="cpu", precision=precision, max_steps=6, callbacks=[guard], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=log_every, default_root_dir=root,  # where divergence.json goes
    )  # fmt: skip
    trainer.fit(_Gradient(gradient))
    return trainer.global_step


@pytest.mark.parametrize("log_every", [50, 1], ids=["unlogged", "logged"])
@pytest.mark.parametrize("deferred", [False, True], ids=["at_once", "deferred"])
@pytest.mark.parametrize(
    ("precision", "largest"),
    [("16-true", 6e4), ("32-true", 3e38), ("bf16-true", 3e38), ("64-true", 1e300)],
)
def test_finite_gradients_whose_norm_overflows_train_on_and_inf_or_nan_stops(
    precision: str, largest: float, deferred: bool, log_every: int, tmp_path: Path
) -> None:
    # Every value finite in the precision, their norm past its largest: not divergence.
    assert (
        _fit(
            torch.full((64,), largest, dtype=torch.float64),
            precision=precision,
            deferred=deferred,
            root=tmp_path,
            log_every=log_every,
        )
        == 6
    )
    for bad in (math.inf, -math.inf, math.nan):
        gradient = torch.zeros(64)
        gradient[37] = bad
        with pytest.raises(DivergenceError, match="at step 0"):
            _fit(
                gradient, precision=precision, deferred=deferred, root=tmp_path, log_every=log_every
            )


class _Statistic(pl.LightningModule):
    """A finite loss, ~3, whose BatchNorm running variance is inf from the third step on."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.bn = nn.Linear(4, 1), nn.BatchNorm1d(4)
        self.losses: list[float] = []

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        if self.global_step == 2:
            with torch.no_grad():
                self.bn.running_var.fill_(float("inf"))
        loss = (self.lin(self.bn(batch[0])) ** 2).mean() + 3.0
        self.losses.append(float(loss))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_under_a_grad_scaler_the_stop_names_the_loss_not_the_scaled_loss(
    tmp_path: Path, accumulate: int
) -> None:
    """16-mixed: Lightning hands on_before_backward the loss the GradScaler scaled, and the
    message said "train/loss was still finite (3578.0)" of a loss of 3.49 scaled by 1024 (static
    review); and under accumulation, Lightning's loss over accumulate_grad_batches (second
    review). A GradScaler works on a CPU too (the pipeline refuses 16-mixed there)."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    torch.manual_seed(0)
    module = _Statistic()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=5, accumulate_grad_batches=accumulate,
        logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        callbacks=[NonFiniteGuard(mode="raise", loss_name="mse", checkpoint_path=None)],
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )  # fmt: skip
    data = DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=8)
    with pytest.raises(DivergenceError, match="running_var became inf or NaN at step 2") as stop:
        trainer.fit(module, data)
    assert scaler.get_scale() == 1024.0  # every step's loss was scaled by it
    said = re.search(r"train/loss was still finite \(([^)]+)\)", str(stop.value))
    # the last micro-batch's loss before the stop, as training_step computed it
    assert said is not None and float(said[1]) == pytest.approx(module.losses[-1], rel=1e-6)

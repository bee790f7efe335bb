"""Stop a run whose loss or gradients became inf or NaN, after saving its last finite state.

The seed's loss (pred − labels).sum() has no minimum: SGD drives every logit to −∞ and the
loss overflows after a few dozen steps. The forward pass that overflows has already written
inf into BatchNorm's running statistics, so the guard snapshots the float buffers when an
accumulation window starts and puts them back before saving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from pipeline.errors import DivergenceError
from pipeline.gradients import all_finite


def divergence_message(step: int, loss_value: float, loss_name: str, saved_to: Path | None) -> str:
    """What happened, why, and what to do."""
    why = (
        "the seed's loss (pred − labels).sum() has no minimum, so SGD drives the logits to −∞ until they "
        "overflow; use loss=mse or loss=cross_entropy for long runs, or fewer steps (trainer.max_steps)"
        if loss_name == "sum_diff"
        else "lower optimizer.lr, set trainer.gradient_clip_val=1.0, or use precision=32-true"
    )
    saved = f"; the last finite state is in {saved_to}" if saved_to else ""
    return f"train/loss became {loss_value} at step {step}: {why}{saved}"


def _uses_grad_scaler(trainer: pl.Trainer) -> bool:
    """16-mixed on GPU: the GradScaler skips steps with inf gradients by design."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


class NonFiniteGuard(pl.Callback):
    """Checks the loss and the gradients before each optimizer step (one host sync a step, one
    all-reduce under DDP). mode 'raise': restore the buffers, save `checkpoint_path`, raise
    DivergenceError. 'warn': warn once and go on."""

    def __init__(self, *, mode: str, loss_name: str, checkpoint_path: Path | None) -> None:
        self.mode = mode
        self.loss_name = loss_name
        self.checkpoint_path = checkpoint_path
        self._warned = False
        self._window_open = False
        self._buffers: list[Tensor] = []
        self._snapshot: list[Tensor] = []
        self._params: list[Tensor] = []
        self._loss_ok: Tensor | None = None
        self._last_loss: Tensor | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._buffers = [b for b in pl_module.buffers() if b.is_floating_point()]
        self._params = list(pl_module.parameters())  # walked once, not on every step
        self._snapshot = [b.detach().clone() for b in self._buffers]

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._buffers, self._snapshot, self._params = [], [], []  # the model is not ours to keep

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._window_open and self.mode == "raise":
            torch._foreach_copy_(self._snapshot, self._buffers)  # BatchNorm stats before this step
        self._window_open = True

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        finite = torch.isfinite(loss.detach())
        self._loss_ok = finite if self._loss_ok is None else self._loss_ok & finite
        self._last_loss = loss.detach()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        ok = self._loss_ok if self._loss_ok is not None else torch.tensor(True)
        if not _uses_grad_scaler(trainer):
            grads = [p.grad for p in self._params if p.grad is not None]
            ok = ok & all_finite(grads).to(ok.device)
        self._window_open, self._loss_ok = False, None
        if not trainer.strategy.reduce_boolean_decision(not bool(ok), all=False):
            return
        loss_value = float(self._last_loss) if self._last_loss is not None else float("nan")
        if self.mode == "warn":
            if not self._warned:
                rank_zero_warn(
                    divergence_message(trainer.global_step, loss_value, self.loss_name, None)
                )
                self._warned = True
            return
        torch._foreach_copy_(self._buffers, self._snapshot)
        if self.checkpoint_path is not None:
            trainer.save_checkpoint(self.checkpoint_path)
        raise DivergenceError(
            divergence_message(
                trainer.global_step, loss_value, self.loss_name, self.checkpoint_path
            )
        )

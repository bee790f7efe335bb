"""The seed's analytic gradient check, live on the real model.

Before training: the seed's Q = 3a³ − b² check (exact), then torch.autograd.gradcheck (float64,
fast mode) on the configured loss and on a float64 copy of the model.

During training, on the first step and every `every_n_steps` (steps N−1, 2N−1, …, counted as
Lightning counts its logging steps): a forward hook captures the head's
input h (N, 512) and output pred (N, C); with G = ∂L/∂pred in closed form for the loss, autograd
must give ∂L/∂fc.bias = Σₙ Gₙ and ∂L/∂fc.weight = Gᵀh. G is divided by accumulate_grad_batches
and summed over the window (Lightning divides the loss), and averaged over DDP ranks (DDP
averages gradients). Tolerance: relative max error, per precision (gradients.TOLERANCES: 1e-9 for
64-true, 1e-4 for 32-true, 2e-2 for the mixed precisions and for TF32, 5e-2 for half weights). Steps whose
gradients are not finite are skipped. Logs gradcheck/fc_bias_max_err, gradcheck/fc_weight_max_err
and gradcheck/passed (1 or 0). Cost on a checked step: one (C, N)·(N, 512) matmul.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from pipeline.errors import GradientCheckError
from pipeline.gradients import (
    gradcheck_loss,
    gradcheck_model,
    head_grads,
    max_relative_error,
    seed_q_check,
    tolerance_for,
)
from pipeline.loggers import add_step_scalars
from pipeline.logging_steps import is_due
from pipeline.losses import Loss

log = logging.getLogger(__name__)


class AnalyticGradientCheck(pl.Callback):
    def __init__(
        self,
        *,
        loss: Loss,
        precision: str,
        every_n_steps: int,
        on_fail: str,
        seed: int,
        tf32: bool = False,
    ) -> None:
        """`seed`: the run's; the pre-training checks draw from a generator of their own seeded
        with it, so enabling the check leaves the global torch RNG (and the run) as it was."""
        self.loss = loss
        self.seed = seed
        self.tolerance = tolerance_for(precision, tf32)
        self.precision = precision
        self.every_n_steps = every_n_steps
        self.on_fail = on_fail
        self._armed = False
        self._target: Tensor | None = None
        self._expected: list[Tensor] | None = (
            None  # [bias (C,), weight (C, 512)] summed over the window
        )
        self._hook: torch.utils.hooks.RemovableHandle | None = None  # on the head, armed only
        self._head: nn.Module | None = None

    def _fail(self, message: str) -> None:
        if self.on_fail == "raise":
            raise GradientCheckError(message)
        rank_zero_warn(message)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        net = cast(nn.Module, pl_module.net)
        generator = torch.Generator().manual_seed(self.seed)
        target = (
            torch.rand(3, 5, generator=generator)  # (N, C) dense labels
            if self.loss.label_kind == "dense"
            else torch.tensor([0, 4, 2])  # (N,) class indices
        )
        checks = {
            "the seed's Q = 3a³ − b² check": seed_q_check(),
            f"gradcheck of loss={self.loss.name}": gradcheck_loss(self.loss.fn, target),
            "gradcheck of a float64 copy of the model": gradcheck_model(net),
        }
        for name, passed in checks.items():
            log.info("before training: %s %s", name, "passed" if passed else "FAILED")
            if not passed:
                self._fail(
                    f"before training: {name} failed: autograd disagrees with finite differences"
                )
        self._head = cast(nn.Module, net.fc)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unhook()
        self._head = None  # the model is not ours to keep

    def _unhook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self.on_fit_end(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self._armed = step == 0 or is_due(step, self.every_n_steps)
        self._target = batch[1] if self._armed else None
        # The head's forward hook only for a checked step's batches: a module with a hook takes
        # torch's slower call path on every forward (~5 µs a step here, for 1 step in 50 checked).
        if self._armed and self._hook is None and self._head is not None:
            self._hook = self._head.register_forward_hook(self._capture)
        elif not self._armed:
            self._unhook()

    def _capture(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if not (self._armed and module.training) or self._target is None:
            return
        trainer = self._trainer
        pred = (
            output.detach().float()
            if output.dtype in (torch.float16, torch.bfloat16)
            else output.detach()
        )
        grad = self.loss.grad(pred, self._target.to(pred.device)) / trainer.accumulate_grad_batches
        bias, weight = head_grads(inputs[0].detach().to(grad.dtype), grad)
        if self._expected is None:
            self._expected = [bias, weight]
        else:
            self._expected[0] += bias
            self._expected[1] += weight

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if not self._armed or self._expected is None:
            return
        expected, self._expected, self._armed = self._expected, None, False
        self._unhook()  # the step's window is over: its batches were captured
        if trainer.world_size > 1:  # DDP averages gradients over ranks: average the closed form too
            expected = [trainer.strategy.reduce(t, reduce_op="mean") for t in expected]
        fc = cast(nn.Linear, cast(nn.Module, pl_module.net).fc)
        actual = [fc.bias.grad, fc.weight.grad]
        if any(a is None or not torch.isfinite(a).all() for a in actual):
            return  # a skipped (non-finite) step: nothing to compare
        bias_err = max_relative_error(actual[0], expected[0])  # type: ignore[arg-type]
        weight_err = max_relative_error(actual[1], expected[1])  # type: ignore[arg-type]
        passed = bias_err <= self.tolerance and weight_err <= self.tolerance
        metrics = {
            "gradcheck/fc_bias_max_err": bias_err,
            "gradcheck/fc_weight_max_err": weight_err,
            "gradcheck/passed": float(passed),
        }
        if trainer.is_global_zero:
            add_step_scalars(trainer, trainer.global_step, metrics)
        if not passed:
            worst, err = (
                ("fc.bias.grad", bias_err)
                if bias_err > weight_err
                else ("fc.weight.grad", weight_err)
            )
            self._fail(
                f"analytic gradient check failed at step {trainer.global_step} (rank {trainer.global_rank}): "
                f"{worst} differs from the closed form for loss={self.loss.name} by max relative error "
                f"{err:.3g} > tolerance {self.tolerance:g} (precision={self.precision})"
            )

"""Gradient instruments in TensorBoard: block norms, update ratios, non-finite counts, histograms.

Reads gradients in on_before_optimizer_step, where they are complete after accumulation and
unscaled under 16-mixed (and not yet clipped). On logged steps it also copies the weights there,
and in on_train_batch_end, after the optimizer step, measures the step the optimizer took.
Rank 0 only: after DDP's all-reduce its gradients are the global ones, and other ranks skip
the work. Tags:
  on the steps Lightning logs (trainer.log_every_n_steps): grad_norm/total, grad_norm/<block>
                           (before clipping), grad/clip_scale (with trainer.gradient_clip_val by
                           norm: what clipping multiplied the gradients by, 1 when it did not),
                           update_ratio/total, update_ratio/<block> (‖w_after − w_before‖/‖w_before‖),
                           grad/nonfinite_count (parameters whose gradient holds inf or NaN)
  every histogram_every_n_steps, and the first and last step (0: never): grad/<param>, weight/<param> histograms
Cost on logged steps only: a fused norm pass over the gradients (shared with the non-finite
guard, which takes it every step: StepGradNorms), a fused copy of the weights into a buffer kept
for the run (memory: one copy of the model's weights), three fused passes after the step (the
old weights' norms, the difference in place, its norms) and one read of them to the host, which
does not wait for the device (pipeline.step_scalars), where the per-tensor norms are summed by
block. Nothing on other steps.
Histograms are binned on the device (torch.histc), two small transfers for all of them, after one
read of whether every gradient norm is finite (a step with one that is not has none).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn

from pipeline.callbacks.step_grad_norms import StepGradNorms
from pipeline.gradients import (
    BLOCKS,
    block_index,
    copy_into,
    histograms,
    norms_by_block_on_host,
    update_norms_,
    update_ratio,
)
from pipeline.loggers import add_step_read
from pipeline.logging_steps import is_due, logs_this_step

# A logged step's block tags, by BLOCKS then the total: made once, not on every logged step.
_GRAD_NORM_TAGS = tuple(f"grad_norm/{b}" for b in (*BLOCKS, "total"))
_UPDATE_RATIO_TAGS = tuple(f"update_ratio/{b}" for b in (*BLOCKS, "total"))


@dataclass
class _PendingStep:
    """What a logged step measured before the optimizer step, kept on the device until after it."""

    step: int
    weights: list[torch.Tensor]  # the parameters, in `index` order (read under torch.no_grad)
    before: list[torch.Tensor]  # their copies before the step (the logger's buffer)
    blocks: list[int]  # each parameter's block (gradients.block_index)
    grad_norms: torch.Tensor  # (P,) each parameter's
    clip: float | None  # the norm Lightning clips the gradients to, after these were read


class GradientLogger(pl.Callback):
    """`grad_norms`: the step's gradient norms, shared with the non-finite guard (default: its own)."""

    def __init__(
        self, *, histogram_every_n_steps: int, grad_norms: StepGradNorms | None = None
    ) -> None:
        self.histogram_every_n_steps = histogram_every_n_steps
        self.skipped_histograms = 0
        self._pending: _PendingStep | None = None
        self._grad_norms = grad_norms or StepGradNorms()
        self._before: list[torch.Tensor] | None = None  # reused every logged step
        self._before_names: tuple[str, ...] = ()  # the parameters it was made for
        # The module's parameters, walked once a fit (~0.1 ms for ResNet18), and the blocks of
        # each set of them that has gradients (usually one set: all of them).
        self._named: list[tuple[str, torch.nn.Parameter]] = []
        self._blocks: dict[tuple[str, ...], list[int]] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._named, self._blocks = list(pl_module.named_parameters()), {}
        self._before_names = ()  # a buffer of an earlier fit's is checked before it is reused

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._before, self._pending = None, None  # the model-sized buffer goes with the fit
        self._before_names = ()
        self._named, self._blocks = [], {}  # the model is not ours to keep

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._grad_norms.forget()

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        step = trainer.global_step
        log_scalars = logs_this_step(trainer)
        log_histograms = self.histogram_every_n_steps > 0 and (
            is_due(step, self.histogram_every_n_steps) or step in (0, trainer.max_steps - 1)
        )  # the first and last steps too: a short run's Histograms tab is never empty
        if not (log_scalars or log_histograms):
            return
        named = [(n, p) for n, p in self._named if p.grad is not None]
        grads = [g for _, p in named if (g := p.grad) is not None]  # each read once: ~60 ns
        names = tuple(n for n, _ in named)
        if names not in self._blocks:
            self._blocks[names] = block_index(names).tolist()
        each = self._grad_norms.of(grads)  # one pass over the gradients serves both figures
        if not log_scalars:
            self._histograms(trainer, named, grads, step, each)
            return
        weights: list[torch.Tensor] = [p for _, p in named]  # read under no_grad: no detach each
        with torch.no_grad():  # made for these parameters (this fit's, with gradients): as they are
            self._before = copy_into(
                self._before, weights, known_to_fit=names == self._before_names
            )
        self._before_names = names
        self._pending = _PendingStep(
            step=step,
            weights=weights,
            before=self._before,
            blocks=self._blocks[names],
            grad_norms=each,
            clip=clip_norm(trainer),
        )
        if log_histograms:
            self._histograms(trainer, named, grads, step, each)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """After the optimizer step of a logged step: the update ratios, and every scalar tag from
        one read of the device, which does not wait for it (loggers.add_step_read). (Under
        accumulation only the window's last batch has a pending step.)"""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        # Each parameter's gradient, weight (before the step) and step norm, read together and
        # summed by block on the host.
        with torch.no_grad():  # the parameters themselves, not detached copies
            weight_norms, step_norms = update_norms_(pending.before, pending.weights)
        # (3, P), one operation, in the widest of their dtypes (float64 past float32's range)
        rows = torch.stack([pending.grad_norms, weight_norms, step_norms])
        make = partial(_scalars, blocks=pending.blocks, clip=pending.clip)
        add_step_read(trainer, pending.step, rows, make)

    def _histograms(
        self,
        trainer: pl.Trainer,
        named: list[tuple[str, torch.nn.Parameter]],
        grads: list[torch.Tensor],
        step: int,
        grad_norms: torch.Tensor,
    ) -> None:
        nonfinite = int((~torch.isfinite(grad_norms)).sum())
        if nonfinite:
            self.skipped_histograms += 1
            scaler = getattr(trainer.precision_plugin, "scaler", None) is not None
            why = " (16-mixed's loss scale: the GradScaler skips this step)" if scaler else ""
            rank_zero_warn(
                f"step {step}: {nonfinite} gradient norm(s) overflowed or are NaN{why}; "
                f"histograms skipped ({self.skipped_histograms} so far)"
            )
            return
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not writers:
            return
        tags = [name.removeprefix("net.") for name, _ in named]
        fields = histograms([*grads, *(p for _, p in named)])  # two host transfers in all
        for writer in writers:
            for tag, g, w in zip(tags, fields[: len(tags)], fields[len(tags) :], strict=True):
                writer.add_histogram_raw(f"grad/{tag}", **g, global_step=step)
                writer.add_histogram_raw(f"weight/{tag}", **w, global_step=step)


def clip_norm(trainer: pl.Trainer) -> float | None:
    """The norm Lightning clips the gradients to before the optimizer step
    (trainer.gradient_clip_val, by norm: the default algorithm), or None: no clipping, or by value."""
    value, algorithm = trainer.gradient_clip_val, trainer.gradient_clip_algorithm
    if not value or value <= 0 or algorithm not in (None, "norm"):
        return None
    return float(value)


def clip_scale(clip: float, total: float) -> float:
    """What gradient clipping multiplied the gradients by, from their total norm before it:
    torch's clip_grad_norm_ coefficient, max_norm / (total + 1e-6), at most 1 (NaN stays NaN)."""
    scale = clip / (total + 1e-6)
    return scale if scale < 1.0 or math.isnan(scale) else 1.0


def _scalars(
    rows: list[list[float]], *, blocks: list[int], clip: float | None = None
) -> dict[str, float]:
    """The logged step's tags from its (3, P) norms on the host: each parameter's gradient, weight
    (before the step) and step norms, summed by block (`blocks`: each parameter's); with `clip`,
    the clipping's scale."""
    grad_rows = rows[0]
    grads, weight_norms, step_norms = norms_by_block_on_host(rows, blocks, len(BLOCKS))
    metrics: dict[str, float] = dict(zip(_GRAD_NORM_TAGS, grads, strict=True))
    metrics |= {tag: update_ratio(s, w)
                for tag, s, w in zip(_UPDATE_RATIO_TAGS, step_norms, weight_norms, strict=True)}  # fmt: skip
    metrics["grad/nonfinite_count"] = sum(not math.isfinite(v) for v in grad_rows)
    if clip is not None:
        metrics["grad/clip_scale"] = clip_scale(clip, grads[-1])
    return metrics

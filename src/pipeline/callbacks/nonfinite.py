"""Stop a run whose loss, gradients or BatchNorm statistics became inf or NaN, after saving
its last finite state.

The seed's loss (pred − labels).sum() has no minimum: SGD drives every logit to −∞ and the
loss overflows after a few dozen steps. The forward pass that overflows has already written
inf into BatchNorm's running statistics, so the guard snapshots the float buffers when an
accumulation window starts and puts them back before saving (pipeline.nonfinite_guard). A
running variance can overflow first, while the loss is finite (a training batch is normalised
by its own statistics; the defaults do near step 25): each step's flag covers the buffers too,
and the message then names the statistic. The check is torch's fused one, the GradScaler's
(pipeline.nonfinite_guard.mark_nonfinite): one operation over every loss, statistic and gradient
value a step, in any precision (a finite value is finite: a gradient whose sum of squares
overflows is not taken for divergence, nor a 16-true gradient norm past 65504). On the steps
that take the per-tensor gradient norms anyway (below) the check reads them in the gradients'
place: they are exact, inf or NaN only where a gradient holds one (gradients.tensor_norms).

Two ways to check, one outcome:
- at once (an optimizer that is not fused: on a CPU by default): the host reads the step's
  flag before the optimizer step. On a GPU that read waits for the step's work, and the GPU
  idles while the host queues the next.
- deferred (a fused optimizer, `optimizer.fused`, on for CUDA by default): the step's flag
  goes into a FlagRing (pipeline.nonfinite_guard) on the device, is all-reduced over DDP
  processes, and is read `lag` steps later (2), or by a checkpoint about to save (which then
  does not), so the read rarely waits and all processes stop together. Once set it stays set:
  the fused optimizer skips its update (torch's `found_inf`, as the GradScaler uses) and the
  BatchNorm snapshot stops following the buffers. So the state saved on divergence is the one
  before the first non-finite step, as at once; that step and up to `lag` after it ran without
  updating, so the checkpoint's step counter is up to `lag` + 1 higher.

On stopping (mode raise) rank 0 writes `divergence.json` in the run directory (pipeline.divergence):
the step, the loss, the failing batch's sample indices, and the per-block gradient norms of the
failing step and of the last finite logging step, and the message names the first block, in
forward order, whose gradient norm overflowed or is NaN. What that costs a healthy run: the
per-tensor gradient norms (one fused pass) on logging steps, shared with the gradient logger,
and deferred on every step (a step's gradients are gone when its flag is read), kept as a
reference until read; and the data module keeps a reference to the latest batch's indices. At
once, the failing step's norms are taken when it fails. The block sums and every host read but
the flag's happen only once the run has diverged.
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from pipeline.callbacks.step_grad_norms import StepGradNorms
from pipeline.divergence import (
    block_norm_record,
    divergence_message,
    divergence_record,
    first_nonfinite_block,
    weights_nonfinite_message,
    write_divergence,
)
from pipeline.errors import DivergenceError
from pipeline.gradients import block_index, state_is_finite
from pipeline.logging_steps import is_due
from pipeline.nonfinite_guard import (
    DEFERRED_LAG,
    BufferSnapshot,
    Flagged,
    FlagRing,
    mark_nonfinite,
)

# What a step's flag carries to the host: its per-tensor gradient norms (P,), read only if it was
# bad (None where they are not aligned with the blocks), and its samples' indices, one (B,) per
# micro-batch.
_StepRecord = tuple[Tensor | None, list[Tensor]]


def _uses_grad_scaler(trainer: pl.Trainer) -> bool:
    """16-mixed on GPU: the GradScaler skips steps with inf gradients by design."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def can_defer(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer can skip a step by itself: fused (torch's found_inf), and no GradScaler
    (which sets the optimizer's found_inf itself)."""
    return optimizer.defaults.get("fused") is True and not _uses_grad_scaler(trainer)


def nonfinite_statistic(module: torch.nn.Module) -> str | None:
    """The first floating-point buffer of `module` holding inf or NaN (a BatchNorm running
    statistic), by its name under the model (`net.` dropped), or None."""
    return next((name.removeprefix("net.") for name, b in module.named_buffers()
                 if b.is_floating_point() and not torch.isfinite(b).all()), None)  # fmt: skip


class NonFiniteGuard(pl.Callback):
    """Checks the loss and the gradients of every optimizer step. mode 'raise': restore the
    buffers, save `checkpoint_path`, raise DivergenceError. 'warn': warn once and go on.
    `deferred` chooses the check (None: deferred where the optimizer can skip a step by itself);
    `lag` is how many steps late the deferred check reads a step's flag. `grad_norms`: the
    step's gradient norms, shared with the gradient logger (default: its own)."""

    def __init__(
        self,
        *,
        mode: str,
        loss_name: str,
        checkpoint_path: Path | None,
        deferred: bool | None = None,
        lag: int = DEFERRED_LAG,
        grad_norms: StepGradNorms | None = None,
    ) -> None:
        self.mode = mode
        self.loss_name = loss_name
        self.checkpoint_path = checkpoint_path
        self.deferred = deferred
        self.lag = lag
        self._warned = False
        self._window_open = False
        self._snapshot: BufferSnapshot | None = None
        self._params: list[Tensor] = []
        self._norms_exact = True  # the gradient norms can stand in for the gradients in the check
        self._buffer_views: list[Tensor] = []  # the floating-point buffers, flat
        self._window_losses: list[Tensor] = []  # the open window's losses, flat
        self._last_loss: Tensor | None = None
        self._ring: FlagRing[_StepRecord] | None = None  # deferred only
        self._scaled = False  # 16-mixed's GradScaler: it checks the gradients itself
        self._saving = False
        self._one = torch.ones(())
        self._bad = torch.zeros(())  # at once: the step's flag, zeroed again only once set
        self._grad_norms = grad_norms or StepGradNorms()
        # for divergence.json
        self._index: Tensor | None = None  # (P,) each parameter's block
        self._window_indices: list[Tensor] = []  # the open window's micro-batches' indices
        self._logged: deque[tuple[int, Tensor | None]] = deque(maxlen=lag + 2)
        self._first_step, self._fresh_optimizers = 0, True  # set at the train start

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The fit's first step, and whether its optimizers start without state (not resumed)."""
        self._first_step = trainer.global_step
        self._fresh_optimizers = not any(optimizer.state for optimizer in trainer.optimizers)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot = BufferSnapshot(list(pl_module.buffers()))
        self._buffer_views = self._snapshot.float_views()
        named = list(pl_module.named_parameters())
        self._params = [p for _, p in named]  # walked once, not on every step
        # A norm is inf or NaN only where its tensor holds one (gradients.tensor_norms), except
        # a float64 tensor's past ~1e154 (its squares summed in float64): 64-true checks values.
        self._norms_exact = not any(p.dtype == torch.float64 for p in self._params)
        try:
            self._index = block_index([n for n, _ in named])
        except ValueError:  # not ResNet18's blocks: divergence.json goes without block norms
            self._index = None
        self._logged = deque(maxlen=self.lag + 2)
        self._scaled = _uses_grad_scaler(trainer)  # the precision plugin is the fit's
        self._one = torch.ones((), device=pl_module.device)  # the fused check's inverse scale
        self._bad = torch.zeros((), device=pl_module.device)
        if self.deferred is None:
            self.deferred = bool(trainer.optimizers) and can_defer(trainer, trainer.optimizers[0])
        if self.deferred:
            self._ring = FlagRing(
                device=pl_module.device, lag=self.lag, sticky=self.mode == "raise"
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._snapshot, self._params = None, []  # the model is not ours to keep
        self._buffer_views, self._window_losses = [], []
        self._ring, self._last_loss = None, None
        self._logged.clear()
        self._window_indices = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._grad_norms.forget()
        if self._ring is not None:
            self._stop_if_found(trainer, self._ring.read_due(trainer.global_step))
        if not self._window_open:
            self._window_indices, self._window_losses = [], []
            if self.mode == "raise" and self._snapshot is not None:
                # The buffers before this step; deferred, frozen from the first non-finite step on.
                stuck = self._ring.stuck.bool() if self._ring is not None else None
                self._snapshot.take(unless=stuck)
        indices = getattr(trainer.datamodule, "last_train_indices", None)  # type: ignore[attr-defined]
        if indices is not None:
            self._window_indices.append(indices)
        self._window_open = True

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        # Lightning hands these hooks the micro-batch's loss over accumulate_grad_batches (put
        # back in _diverged, on the host), and under 16-mixed scaled by the GradScaler: unscaled
        # here, on the device, with this step's scale (review).
        self._last_loss = loss.detach()
        if self._scaled:
            scale = trainer.precision_plugin.scaler._get_scale_async()  # type: ignore[attr-defined]  # on the device: no wait
            if scale is not None:
                self._last_loss = self._last_loss / scale
        self._window_losses.append(self._last_loss)  # checked with the step

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # The gradients, unless 16-mixed's GradScaler checks them itself.
        grads = [] if self._scaled else [g for p in self._params if (g := p.grad) is not None]
        # The window's losses, the statistics its forward passes left, the gradients: one check.
        # Deferred, a flag a step (the ring holds it until read); at once, one for the run: the
        # check only ever sets it, and it is read every step, so it is 0 until a step is bad.
        bad = torch.zeros((), device=self._one.device) if self._ring is not None else self._bad
        step, batches = trainer.global_step, self._window_indices
        logged = is_due(step, trainer.log_every_n_steps)  # type: ignore[attr-defined]  # set by Lightning
        # (P,) per-tensor gradient norms, for divergence.json and the message's first block: a
        # deferred step carries its own (its gradients are gone when its flag is read); at once
        # they are taken when the step is bad, and on logging steps (shared with the logger).
        each = self._grad_norms.of(grads) if grads and (self._ring is not None or logged) else None
        # Where the step takes them, the norms stand in for the gradients in the check (where
        # exact: a norm is inf or NaN only where its gradient holds one), so it reads P values,
        # not every gradient again (a pass over the model's gradients: 2.4 ms of a 165 ms 64×64
        # ResNet18 step on a CPU here, in a run).
        by_norm = each is not None and self._norms_exact
        checked = [*self._window_losses, *self._buffer_views, *([each] if by_norm else grads)]
        mark_nonfinite(checked, bad, one=self._one)
        self._window_open, self._window_losses = False, []
        norms = self._norms(grads) if each is not None else None  # the same, where aligned
        if self._ring is not None:
            flag = self._ring.push(step, bad, self._last_loss, (norms, batches))
            if self._ring.sticky:
                optimizer.found_inf = flag  # the fused update does nothing while it is 1
        elif trainer.strategy.reduce_boolean_decision(self._read_bad(), all=False):
            loss_value = float(self._last_loss) if self._last_loss is not None else float("nan")
            if norms is None:
                norms = self._norms(grads)
            self._diverged(trainer, step, loss_value, norms, batches)
        if logged:
            self._logged.append((step, norms))  # a reference; summed by block only on divergence

    def _read_bad(self) -> bool:
        """At once: whether this step was non-finite; the flag zeroed again where it was."""
        if self._bad.item() == 0:
            return False
        self._bad.zero_()  # warn mode trains on
        return True

    def _norms(self, grads: list[Tensor]) -> Tensor | None:
        """(P,) the gradients' norms, one fused pass (shared: computed once a step), or None
        where they are not every parameter's (not aligned with the blocks' index)."""
        if not grads:
            return None
        norms = self._grad_norms.of(grads)
        return norms if len(norms) == len(self._params) else None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Deferred: a checkpoint saved while flags are unread waits for them. If one was bad
        (mode raise) the run stops here, before this save writes a state that is not the last
        finite one: the stop saves last.ckpt itself where the weights are finite (BatchNorm's
        statistics put back), and writes nothing where they are not (a finite step's update
        can overflow them: 16-true), where this save wrote them and the message said none was."""
        if self._ring is None or self._saving:
            return
        found = self._ring.read_all()  # read in either mode
        if found is not None and self.mode == "raise":
            self._stop_if_found(trainer, found)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ring is not None:
            self._stop_if_found(trainer, self._ring.read_all())

    def _stop_if_found(self, trainer: pl.Trainer, found: Flagged[_StepRecord] | None) -> None:
        if found is not None:
            assert self._ring is not None
            self._ring.drop()
            norms, micro_batches = found.payload
            self._diverged(trainer, found.step, found.loss, norms, micro_batches)

    def _restore_buffers(self) -> None:
        if self._snapshot is not None:
            self._snapshot.restore()

    def _diverged(
        self,
        trainer: pl.Trainer,
        step: int,
        loss_value: float,
        norms: Tensor | None,
        micro_batches: list[Tensor],
    ) -> None:
        if self.mode == "warn" and self._warned:
            return
        loss_value *= trainer.accumulate_grad_batches  # the micro-batch's loss (on_before_backward)
        module = trainer.lightning_module
        statistic = nonfinite_statistic(module)
        failing = block_norm_record(norms, self._index)
        first_block = first_nonfinite_block(failing)
        if first_block is not None or not math.isfinite(loss_value):
            statistic = None  # the loss or the gradients went first: the usual message
        if self.mode == "warn":
            rank_zero_warn(divergence_message(step, loss_value, self.loss_name, None, first_block,
                                              statistic=statistic, precision=str(trainer.precision)))  # fmt: skip
            self._warned = True
            return
        self._restore_buffers()
        if self._ring is not None and step == self._first_step and self._fresh_optimizers:
            # Every step of this fit was skipped on the device, the first too: torch's fused SGD
            # made its momentum buffers there (torch.empty_like) and filled nothing. The state
            # the immediate check saves: none yet.
            for optimizer in trainer.optimizers:
                optimizer.state.clear()
        last = next(((s, n) for s, n in reversed(self._logged) if s < step), None)

        def record(checkpoint_global_step: int | None) -> Path | None:
            if not trainer.is_global_zero:
                return None
            return write_divergence(
                Path(trainer.default_root_dir),
                divergence_record(
                    step=step,
                    loss=loss_value,
                    failing=failing,
                    last_finite=None
                    if last is None
                    else (last[0], block_norm_record(last[1], self._index)),
                    micro_batches=[b.tolist() for b in micro_batches],
                    checkpoint_global_step=checkpoint_global_step,
                    statistic=statistic,
                ),
            )

        if not state_is_finite([*module.parameters(), *module.buffers()]):
            raise DivergenceError(
                weights_nonfinite_message(step, loss_value, first_block, record(None))
            )
        if self.checkpoint_path is not None:
            self._saving = True
            try:
                trainer.save_checkpoint(self.checkpoint_path)
            finally:
                self._saving = False
        written = record(trainer.global_step if self.checkpoint_path is not None else None)
        raise DivergenceError(
            divergence_message(
                step,
                loss_value,
                self.loss_name,
                self.checkpoint_path,
                first_block,
                written,
                statistic=statistic,
                precision=str(trainer.precision),
            )
        )

"""Stop a run whose loss or gradients became inf or NaN, after saving its last finite state.

The seed's loss (pred − labels).sum() has no minimum: SGD drives every logit to −∞ and the
loss overflows after a few dozen steps. The forward pass that overflows has already written
inf into BatchNorm's running statistics, so the guard snapshots the float buffers when an
accumulation window starts and puts them back before saving.

Two ways to check, one outcome:
- at once (an optimizer that is not fused: on a CPU by default): the host reads the step's
  flag before the optimizer step. On a GPU that read waits for the step's work, and the GPU
  idles while the host queues the next.
- deferred (a fused optimizer, `optimizer.fused`, on for CUDA by default): the flag stays
  on the device and, once set, stays set. The fused optimizer skips its update while it is set
  (torch's `found_inf`, as the GradScaler uses), and the BatchNorm snapshot stops following the
  buffers. Each step's flag travels to a pinned host copy; the host reads it `lag` steps later
  (2), by when the GPU has long finished that step, so the read rarely waits. The same steps on
  every DDP process (the flag is all-reduced on the device), so all stop together. Weights,
  optimizer state and BatchNorm statistics saved on divergence are the ones before the first
  non-finite step, as at once; that step and the `lag` after it ran without updating, so the
  checkpoint's step counter is `lag` + 1 higher.

On stopping (mode raise) rank 0 writes `divergence.json` in the run directory (pipeline.divergence):
the step, the loss, the failing batch's sample indices, and the per-block gradient norms of the
failing step and of the last finite logging step, and the message names the first block, in
forward order, whose gradient norm is inf or NaN. What that costs a healthy run: the per-tensor
gradient norms the check computes anyway are kept (a reference, per step until read; on logging
steps a few more), and the data module keeps a reference to the latest batch's indices. The
block sums and every host read happen only once the run has diverged.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from pipeline.callbacks.gradient_logger import is_due
from pipeline.divergence import (
    block_norm_record,
    divergence_message,
    divergence_record,
    first_nonfinite_block,
    weights_nonfinite_message,
    write_divergence,
)
from pipeline.errors import DivergenceError
from pipeline.gradients import block_index, state_is_finite, tensor_norms

DEFERRED_LAG = 2  # deferred: the host reads a step's flag this many steps later


def _uses_grad_scaler(trainer: pl.Trainer) -> bool:
    """16-mixed on GPU: the GradScaler skips steps with inf gradients by design."""
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def can_defer(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> bool:
    """The optimizer can skip a step by itself: fused (torch's found_inf), and no GradScaler
    (which sets the optimizer's found_inf itself)."""
    return optimizer.defaults.get("fused") is True and not _uses_grad_scaler(trainer)


class BufferSnapshot:
    """The module's buffers (BatchNorm's running statistics and batch counts) as they were at
    some moment: one flat copy per dtype, two kernels to take, none to read on the host."""

    def __init__(self, buffers: list[Tensor]) -> None:
        self.groups: dict[torch.dtype, list[Tensor]] = {}
        for b in buffers:
            self.groups.setdefault(b.dtype, []).append(b)
        # Flat views of the buffers, made once: the module updates them in place.
        self.views = {d: [b.detach().view(-1) for b in g] for d, g in self.groups.items()}
        self.saved = {dtype: torch.cat(views) for dtype, views in self.views.items()}

    def take(self, unless: Tensor | None = None) -> None:
        """Copy the buffers now; where `unless` (a 0-dim bool tensor) is true, keep the old copy."""
        for dtype, views in self.views.items():
            now = torch.cat(views)
            self.saved[dtype] = (
                now if unless is None else torch.where(unless, self.saved[dtype], now)
            )

    def restore(self) -> None:
        for dtype, group in self.groups.items():
            parts = self.saved[dtype].split([b.numel() for b in group])
            torch._foreach_copy_(group, [p.view_as(b) for p, b in zip(parts, group, strict=True)])


@dataclass(frozen=True)
class _Queued:
    """A step's flag on its way to the host: row `slot` of the pinned buffer once `event` is done."""

    step: int
    slot: int
    event: torch.cuda.Event | None  # None: the copy was complete when issued (CPU)
    norms: Tensor | None  # (P,) the step's per-tensor gradient norms, read only if it was bad
    micro_batches: list[Tensor]  # its samples' indices, one (B,) per micro-batch

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class NonFiniteGuard(pl.Callback):
    """Checks the loss and the gradients of every optimizer step. mode 'raise': restore the
    buffers, save `checkpoint_path`, raise DivergenceError. 'warn': warn once and go on.
    `deferred` set before fit chooses the check (tests compare the two)."""

    def __init__(self, *, mode: str, loss_name: str, checkpoint_path: Path | None) -> None:
        self.mode = mode
        self.loss_name = loss_name
        self.checkpoint_path = checkpoint_path
        self.deferred: bool | None = None  # None: deferred where the device can skip a step
        self.lag = DEFERRED_LAG
        self._warned = False
        self._window_open = False
        self._snapshot: BufferSnapshot | None = None
        self._params: list[Tensor] = []
        self._loss_ok: Tensor | None = None
        self._last_loss: Tensor | None = None
        # deferred only
        self._stuck: Tensor | None = None  # 0-dim float32: 1 from the first non-finite step on
        self._host = torch.zeros(0)  # (lag + 1, 2): [flag, loss] per queued step
        self._queued: deque[_Queued] = deque()
        self._found: _Queued | None = None  # the first non-finite step
        self._found_loss = float("nan")
        self._saving = False
        # for divergence.json
        self._index: Tensor | None = None  # (P,) each parameter's block
        self._window_indices: list[Tensor] = []  # the open window's micro-batches' indices
        self._logged: deque[tuple[int, Tensor | None]] = deque(maxlen=DEFERRED_LAG + 2)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot = BufferSnapshot(list(pl_module.buffers()))
        named = list(pl_module.named_parameters())
        self._params = [p for _, p in named]  # walked once, not on every step
        try:
            self._index = block_index([n for n, _ in named])
        except ValueError:  # not ResNet18's blocks: divergence.json goes without block norms
            self._index = None
        self._logged = deque(maxlen=self.lag + 2)
        device = pl_module.device
        if self.deferred is None:
            self.deferred = bool(trainer.optimizers) and can_defer(trainer, trainer.optimizers[0])
        if self.deferred:
            self._stuck = torch.zeros((), device=device)
            self._host = torch.zeros(self.lag + 1, 2, pin_memory=device.type == "cuda")
            self._queued.clear()
            self._found = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._snapshot, self._params = None, []  # the model is not ours to keep
        self._stuck, self._last_loss = None, None
        self._queued.clear()
        self._logged.clear()
        self._window_indices = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.deferred:
            self._read_flags(before_step=trainer.global_step - self.lag)
            self._stop_if_found(trainer)
        if not self._window_open:
            self._window_indices = []
            if self.mode == "raise" and self._snapshot is not None:
                # The buffers before this step; deferred, frozen from the first non-finite step on.
                self._snapshot.take(unless=self._stuck.bool() if self._stuck is not None else None)
        indices = getattr(trainer.datamodule, "last_train_indices", None)  # type: ignore[attr-defined]
        if indices is not None:
            self._window_indices.append(indices)
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
        norms = None  # (P,) per-tensor gradient norms: inf or NaN where a gradient holds one
        if not _uses_grad_scaler(trainer):
            grads = [p.grad for p in self._params if p.grad is not None]
            if grads:
                norms = tensor_norms(grads)  # one fused pass
                ok = ok & torch.isfinite(norms).all().to(ok.device)
            if len(grads) != len(self._params):
                norms = None  # not aligned with the blocks' index
        self._window_open, self._loss_ok = False, None
        step, batches = trainer.global_step, self._window_indices
        if self.deferred:
            self._queue(trainer, optimizer, ok, norms, batches)
        elif trainer.strategy.reduce_boolean_decision(not bool(ok), all=False):
            loss_value = float(self._last_loss) if self._last_loss is not None else float("nan")
            self._diverged(trainer, step, loss_value, norms, batches)
        if is_due(step, trainer.log_every_n_steps):  # type: ignore[attr-defined]  # set by Lightning
            self._logged.append((step, norms))  # a reference; summed by block only on divergence

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Deferred: a checkpoint saved while flags are unread waits for them, and holds the
        last finite BatchNorm statistics (the dict shares the buffers' storage) if one was bad."""
        if self.deferred and not self._saving:
            self._read_flags()
            if self._found is not None and self.mode == "raise":
                self._restore_buffers()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.deferred:
            self._read_flags()
            self._stop_if_found(trainer)

    def _queue(
        self,
        trainer: pl.Trainer,
        optimizer: Any,
        ok: Tensor,
        norms: Tensor | None,
        micro_batches: list[Tensor],
    ) -> None:
        """Deferred: this step's flag, made sticky and handed to the optimizer, on its way to the host."""
        assert self._stuck is not None
        bad = (~ok).to(self._stuck.device, torch.float32)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # queued, no wait
        if self.mode == "raise":
            self._stuck = torch.maximum(self._stuck, bad)
            optimizer.found_inf = self._stuck  # the fused update does nothing while it is 1
            bad = self._stuck
        if len(self._queued) == len(self._host):  # full (no batch start read it): read the oldest
            self._read_flags(before_step=self._queued[0].step + 1)
        slot = (self._queued[-1].slot + 1) % len(self._host) if self._queued else 0
        loss = self._last_loss if self._last_loss is not None else torch.tensor(float("nan"))
        row = torch.stack([bad, loss.to(bad.device, torch.float32)])
        self._host[slot].copy_(row, non_blocking=True)
        event = None
        if bad.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._queued.append(_Queued(trainer.global_step, slot, event, norms, micro_batches))

    def _read_flags(self, before_step: float = float("inf")) -> None:
        """Read the queued flags of steps before `before_step` (waiting for the device where it
        has not finished them), oldest first; remember the first non-finite step."""
        while self._queued and self._queued[0].step < before_step:
            oldest = self._queued.popleft()
            oldest.wait()
            flag, loss = self._host[oldest.slot].tolist()
            if flag > 0 and self._found is None:
                self._found, self._found_loss = oldest, loss

    def _stop_if_found(self, trainer: pl.Trainer) -> None:
        if self._found is not None:
            self._queued.clear()
            found = self._found
            self._diverged(trainer, found.step, self._found_loss, found.norms, found.micro_batches)

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
        if self.mode == "warn":
            if not self._warned:
                rank_zero_warn(divergence_message(step, loss_value, self.loss_name, None))
                self._warned = True
            return
        self._restore_buffers()
        module = trainer.lightning_module
        failing = block_norm_record(norms, self._index)
        first_block = first_nonfinite_block(failing)
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
                step, loss_value, self.loss_name, self.checkpoint_path, first_block, written
            )
        )

"""The gradient noise scale B_simple = tr(Σ)/‖G‖², live, in total and per block.

B_simple (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training") is the critical
batch size: a global batch much larger than it buys little per sample. It comes from the
squared norms of two mean gradients over b_small < b_big samples of the same step (the unbiased
estimators of the paper's appendix A), averaged over logged steps (`ema_decay` a logged step),
because one step's estimate is noisy. The two batch sizes, by run:
- one process, no accumulation (noise_scale=on only; auto skips it there): the batch's first
  half against the whole batch. A forward
  hook keeps the model's output on logged steps, and one more backward pass from it, with the
  second half's rows of ∂loss/∂output zeroed, gives the first half's gradient (BatchNorm keeps
  the whole batch's statistics). Cost: one backward pass on logged steps, and the output's graph
  kept until the real backward has run.
- trainer.accumulate_grad_batches = k ≥ 2: the window's first micro-batch (its gradient, read
  after its backward) against the accumulated gradient of all k. Cost: one fused norm pass more.
- DDP (N processes): the process's own gradient against the all-reduced one, b_big = N·b_small.
  A DDP communication hook takes the local norms of each bucket before it all-reduces it (the
  default all-reduce after): on logged steps one fused norm pass more, on other steps a Python
  call per bucket. Rank 0's own gradient is the small batch. Accumulation as well: the window's
  accumulated local gradient is then the small batch.
Norms are read after the backward, before the GradScaler unscales: both batch sizes carry the
same scale, which the ratio cancels. A step whose gradients overflow leaves the averages alone.
Tags, on the steps Lightning logs (trainer.log_every_n_steps): grad_noise/b_simple, grad_noise/b_simple/<block>, and
grad_noise/batch_size (the global batch b_big, to read beside it). One host transfer a logged
step. Rank 0 only.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

from pipeline.gradients import (
    BLOCKS,
    block_index,
    block_norms,
    ema_update,
    first_half_grads,
    noise_scale,
    noise_scale_terms,
    tensor_norms,
)
from pipeline.loggers import add_step_read
from pipeline.logging_steps import logs_this_step


def _trainable(pl_module: pl.LightningModule) -> tuple[list[str], list[torch.nn.Parameter]]:
    named = [(n, p) for n, p in pl_module.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


class GradientNoiseScale(pl.Callback):
    def __init__(self, *, ema_decay: float, halves: bool = True) -> None:
        self.ema_decay = ema_decay
        self.halves = halves  # measure in one process without accumulation (a backward pass more)
        self.mode = "halves"  # set at the start of fit: halves | accumulation | ddp | off
        self.averages: Tensor | None = None  # (2, blocks + total): ‖G‖², tr(Σ)
        self._hook: torch.utils.hooks.RemovableHandle | None = None
        self._due = False  # this batch belongs to a logged step
        self._position = 0  # the batch's place in its accumulation window
        self._batch_size = 0
        self._b_small = 0  # samples behind _small_sq
        self._output: Tensor | None = None
        # (blocks + total,), the small batch's mean gradient's squared norms
        self._small_sq: Tensor | None = None
        self._block_of: dict[int, int] = {}  # id(parameter) → its block's position (DDP)
        self._index = torch.zeros(0, dtype=torch.long)
        self._present: list[int] = []  # the blocks that hold parameters

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        names, params = _trainable(pl_module)
        self._index = block_index(names)
        self._present = sorted(set(self._index.tolist()))
        if trainer.world_size > 1:
            self.mode = "ddp"
            self._block_of = {id(p): i for p, i in zip(params, self._index.tolist(), strict=True)}
            ddp = trainer.strategy.model
            assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
            # A lambda: DDP checks the hook's annotations, which `annotations` makes strings.
            ddp.register_comm_hook(
                None, lambda state, bucket: self._local_norms_then_allreduce(bucket)
            )
        elif trainer.accumulate_grad_batches > 1:
            self.mode = "accumulation"
        elif self.halves:
            self.mode = "halves"
            self._hook = pl_module.register_forward_hook(self._keep_output)
        else:
            self.mode = "off"  # noise_scale=auto in one process: only where it is nearly free
            self._due = False

    def _local_norms_then_allreduce(
        self, bucket: torch.distributed.GradBucket
    ) -> torch.futures.Future[Tensor]:
        """DDP's communication hook: this process's gradients, per block, before the all-reduce."""
        if self._due:
            grads = bucket.gradients()
            index = torch.tensor([self._block_of[id(p)] for p in bucket.parameters()])
            norms = tensor_norms(grads)  # float32, float64 under 64-true
            squares = norms.new_zeros(len(BLOCKS))
            squares.index_add_(0, index.to(squares.device), norms**2)
            total = torch.cat([squares, squares.sum().view(1)])
            self._small_sq = total if self._small_sq is None else self._small_sq + total
        return default_hooks.allreduce_hook(None, bucket)  # type: ignore[arg-type]

    def state_dict(self) -> dict[str, Any]:
        """The averages, in the checkpoint: a resumed run continues the same curve."""
        return {"averages": None if self.averages is None else self.averages.tolist()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        averages = state_dict["averages"]  # Python floats: float32's or float64's values exactly
        self.averages = None if averages is None else torch.tensor(averages, dtype=torch.float64)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _keep_output(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._due and module.training and isinstance(output, Tensor):
            self._output = output  # (B, ...): the batch on dim 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.mode == "off":  # for the fit: every hook returns at `_due`
            return
        self._due = (
            trainer.is_global_zero
            and bool(trainer.loggers)  # no logger (logger=none): nothing to measure for
            and logs_this_step(trainer)
        )
        # Lightning zeroes the gradients at batch_idx % k == 0 (batch_idx counts within the epoch).
        self._position = batch_idx % trainer.accumulate_grad_batches
        self._batch_size = len(batch[0])  # (inputs, targets)
        self._output = None

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if not self._due or self.mode != "halves" or self._output is None:
            return
        output, self._output = self._output, None
        half = output.shape[0] // 2
        if half == 0:
            return
        grads = first_half_grads(loss, output, _trainable(pl_module)[1])
        scale = output.shape[0] / half  # the first half's mean gradient, from its share
        self._small_sq = (scale * self._block_norms(grads)) ** 2
        self._b_small = half

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._due:
            return
        _, params = _trainable(pl_module)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        if self.mode == "ddp":  # after the backward: the gradients are all-reduced
            if self._small_sq is not None and not trainer.fit_loop.epoch_loop._should_accumulate():
                local = self._batch_size * (self._position + 1)
                big_sq = self._block_norms(grads) ** 2
                self._update(trainer, big_sq, local, local * trainer.world_size)
            return
        if self.mode == "halves":
            if self._small_sq is not None:
                self._update(
                    trainer, self._block_norms(grads) ** 2, self._b_small, self._batch_size
                )
            return
        if self._position == 0:
            self._small_sq = self._block_norms(grads) ** 2  # the first micro-batch's (÷ k)
            self._b_small = self._batch_size
            return
        if self._small_sq is None or trainer.fit_loop.epoch_loop._should_accumulate():
            return
        # The window's last micro-batch: the gradient is the sum of m micro-batches' (each ÷ k).
        # In mean-gradient units times m/k: the first one m·g₁, the accumulated one as it is.
        num_micro = self._position + 1
        self._small_sq = self._small_sq * num_micro**2
        self._update(
            trainer, self._block_norms(grads) ** 2, self._b_small, self._b_small * num_micro
        )

    def _block_norms(self, tensors: list[Tensor]) -> Tensor:
        return block_norms(tensors, self._index, len(BLOCKS))

    def _update(self, trainer: pl.Trainer, big_sq: Tensor, b_small: int, b_big: int) -> None:
        """One more estimate into the averages; logged by rank 0."""
        assert self._small_sq is not None
        small_sq, self._small_sq = self._small_sq, None
        estimate = torch.stack(noise_scale_terms(small_sq, big_sq, b_small, b_big))
        if self.averages is None:
            self.averages = torch.zeros_like(estimate)
        self.averages = self.averages.to(estimate)  # from a checkpoint: on the host
        self.averages = ema_update(self.averages, estimate, self.ema_decay)
        if not trainer.is_global_zero or not trainer.loggers:
            return
        add_step_read(  # one read of the device, without a wait for it
            trainer,
            trainer.global_step,
            noise_scale(self.averages[1], self.averages[0]),
            partial(_scalars, b_big=b_big, present=self._present),
        )


def _scalars(values: list[float], *, b_big: int, present: list[int]) -> dict[str, float]:
    """The tags of one estimate from its B_simple by block, then in total, on the host."""
    metrics = {"grad_noise/b_simple": values[-1], "grad_noise/batch_size": float(b_big)}
    metrics |= {f"grad_noise/b_simple/{BLOCKS[i]}": values[i] for i in present}
    return metrics

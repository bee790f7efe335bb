"""The non-finite guard's mechanism, torch only: a fused check that flags a step's inf or NaN, a
ring of device flags the host reads steps later, and a snapshot of the module's buffers to put
back after a bad step.

mark_nonfinite: the step's flag from its losses, statistics and gradients, one fused operation.

FlagRing: each optimizer step pushes a 0-dim flag (1: its loss or gradients held inf or NaN)
that stays on the device, all-reduced over DDP processes (queued, no wait), and travels to a
pinned host row without a sync. The host reads a step's row `lag` + 1 steps later, by when the
device has long finished it, so the read rarely waits. Sticky (mode raise): the flag, once 1,
stays 1, and is what a fused optimizer reads as `found_inf` to skip its update, as the
GradScaler does. A step's loss stays on the device, read only if its flag is set. Cost: one
operation and one small copy a step, `lag` + 1 floats of pinned memory.

BufferSnapshot: the buffers (BatchNorm's running statistics and batch counts) copied when an
accumulation window starts, put back bitwise before saving: the forward pass that overflows has
already written inf into them. Cost: one flat copy per dtype, two kernels to take, no host read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

DEFERRED_LAG = 2  # the host reads step s's flag when step s + 1 + DEFERRED_LAG starts

T = TypeVar("T")  # what a step carries with its flag, handed back only if it was non-finite


class BufferSnapshot:
    """The module's buffers as they were at some moment: one flat copy per dtype."""

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

    def float_views(self) -> list[Tensor]:
        """Flat views of the floating-point buffers holding values (not the batch counts)."""
        return [v for dtype, views in self.views.items() if dtype.is_floating_point
                for v in views if v.numel()]  # fmt: skip

    def restore(self) -> None:
        """Write the copy back into the buffers, in place."""
        for dtype, group in self.groups.items():
            parts = self.saved[dtype].split([b.numel() for b in group])
            torch._foreach_copy_(group, [p.view_as(b) for p, b in zip(parts, group, strict=True)])


def fused_check_takes(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether torch's fused non-finite check (the GradScaler's) answers rightly for `dtype` on
    `device`: every float dtype on a CPU; float16 and float32 on CUDA. There bfloat16 has no
    kernel (pytorch#127176, open in torch 2.14), and the float64 one tests each value after a
    cast to float32 (AmpKernels.cu's isfinite_ensure_cuda_math takes a float; its sm_90 code
    converts first): a finite float64 past ~3.4e38 read as inf (64-true's values, and the
    float64 gradient norms the guard reads in the gradients' place; static review)."""
    return device.type == "cpu" or (
        device.type == "cuda" and dtype in (torch.float16, torch.float32)
    )


def mark_nonfinite(tensors: Sequence[Tensor], flag: Tensor, *, one: Tensor) -> None:
    """Set `flag` (0-dim float32) to 1.0 where any value of `tensors` (floating point, on its
    device) is inf or NaN, and leave it as it is otherwise; no host read. `one`: a 0-dim float32
    1.0 there. The values are left bitwise as they were.

    torch's fused check, the one the GradScaler unscales with (an inverse scale of 1 multiplies
    nothing), reads each value once: one operation for any number of tensors on a CPU, where a
    gradient norm each took one dispatch a tensor (foreach ops loop on a CPU: 26 µs for 22
    tiny gradients against 6 here). A value is non-finite or it is not: a finite gradient
    whose squares overflow is finite, where its norm is not (a 16-true gradient norm past 65504
    was taken for divergence). On CUDA it takes one dtype a call: float64 values scaled into
    float32's range first (`float32_testable`), and bfloat16 goes to `mark_nonfinite_by_sum`."""
    if not tensors:
        return
    if flag.device.type == "cpu":  # one call for every dtype at once
        torch._amp_foreach_non_finite_check_and_unscale_(list(tensors), flag, one)
        return
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    for dtype, group in groups.items():
        if fused_check_takes(flag.device, dtype):
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, one)
        elif dtype == torch.float64:  # the guard's norms on CUDA: one operation more, not four
            torch._amp_foreach_non_finite_check_and_unscale_(float32_testable(group), flag, one)
        else:
            mark_nonfinite_by_sum(group, flag)


# A power of two (so exact) that takes float64's largest finite value, ~1.8e308, to ~1.7e7.
FLOAT64_INTO_FLOAT32 = 2.0**-1000


def float32_testable(tensors: list[Tensor]) -> list[Tensor]:
    """float64 `tensors` times FLOAT64_INTO_FLOAT32 (new tensors, one fused operation): each value
    finite where, and only where, it was, and so still once cast to float32, which is what
    CUDA's fused check tests (the smallest values go to 0: finite)."""
    return list(torch._foreach_mul(tensors, FLOAT64_INTO_FLOAT32))


def mark_nonfinite_by_sum(tensors: Sequence[Tensor], flag: Tensor) -> None:
    """`mark_nonfinite` where the fused check does not go: every value times 0, summed, is NaN
    where one is inf or NaN and 0 otherwise (a sum of zeros cannot overflow, whatever the dtype
    or the values' size). A flat copy of the values and four operations."""
    if tensors:
        zeros = torch.cat([t.reshape(-1) for t in tensors]).mul_(0).sum(dtype=torch.float32)
        torch.maximum(flag, zeros.nan_to_num(nan=1.0), out=flag)


@dataclass(frozen=True)
class Flagged(Generic[T]):
    """The first step the ring read as non-finite: its step, its loss, what it carried."""

    step: int
    loss: float
    payload: T


@dataclass(frozen=True)
class _InFlight(Generic[T]):
    """A step's flag on its way to the host: row `slot` of the pinned buffer once `event` is done."""

    step: int
    slot: int
    event: torch.cuda.Event | None  # None: the copy was complete when issued (CPU)
    loss: Tensor | None  # read on the host only if the step was non-finite
    payload: T

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()


class FlagRing(Generic[T]):
    """Per-step non-finite flags, kept on `device` and read on the host `lag` steps late."""

    def __init__(self, *, device: torch.device, lag: int = DEFERRED_LAG, sticky: bool) -> None:
        self.lag = lag
        self.sticky = sticky
        self.stuck = torch.zeros((), device=device)  # 0-dim float32: 1 from the first bad step on
        self._host = torch.zeros(lag + 1, pin_memory=device.type == "cuda")  # one flag a step
        self._in_flight: deque[_InFlight[T]] = deque()
        self.found: Flagged[T] | None = None  # the first non-finite step read so far

    def push(self, step: int, bad: Tensor, loss: Tensor | None, payload: T) -> Tensor:
        """Queue step `step`'s flag (`bad`: 0-dim float32, 1.0 if the step was not finite, as
        `mark_nonfinite` sets it) and its loss (kept on the device, read only if the step was
        non-finite); returns the flag as queued, 0-dim float32 (sticky: the one a fused optimizer
        takes as `found_inf`). One operation (sticky) and the copy a step."""
        if bad.device != self.stuck.device:  # compared: .to costs an operation
            bad = bad.to(self.stuck.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)  # queued, no wait
        # Sticky: in place, as the optimizer holds this tensor as its found_inf.
        flag = torch.maximum(self.stuck, bad, out=self.stuck) if self.sticky else bad
        if len(self._in_flight) == len(self._host):  # full (no step start read it): read the oldest
            self._read(before_step=self._in_flight[0].step + 1)
        slot = (self._in_flight[-1].slot + 1) % len(self._host) if self._in_flight else 0
        self._host[slot].copy_(flag, non_blocking=True)
        event = None
        if flag.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        self._in_flight.append(_InFlight(step, slot, event, loss, payload))
        return flag

    def read_due(self, now: int) -> Flagged[T] | None:
        """At the start of step `now`: read the flags of steps before `now` − `lag`."""
        return self._read(before_step=now - self.lag)

    def read_all(self) -> Flagged[T] | None:
        """Read every queued flag, waiting for the device where it has not finished."""
        return self._read(before_step=float("inf"))

    def drop(self) -> None:
        """Forget the flags not read yet."""
        self._in_flight.clear()

    def _read(self, before_step: float) -> Flagged[T] | None:
        """Read the queued flags of steps before `before_step`, oldest first; remember the first
        non-finite step, and return it (from this read or an earlier one)."""
        while self._in_flight and self._in_flight[0].step < before_step:
            oldest = self._in_flight.popleft()
            oldest.wait()
            if self._host[oldest.slot].item() > 0 and self.found is None:
                loss = float("nan") if oldest.loss is None else float(oldest.loss)
                self.found = Flagged(oldest.step, loss, oldest.payload)
        return self.found

"""The per-tensor gradient norms of the current optimizer step, shared by the instruments that
read them in on_before_optimizer_step: the non-finite guard (every step) and the gradient logger
(logging steps). One fused pass over the gradients a step, not one each.

Each user calls `forget()` when a batch starts, so norms never outlive their step (a cache keyed
on the step number alone would serve a stale step to a second fit of the same callbacks).
"""

from __future__ import annotations

from torch import Tensor

from pipeline.gradients import tensor_norms


class StepGradNorms:
    def __init__(self) -> None:
        self._norms: Tensor | None = None

    def forget(self) -> None:
        self._norms = None

    def of(self, grads: list[Tensor]) -> Tensor:
        """(P,): each of `grads`' L2 norm (gradients.tensor_norms: inf or NaN where it holds
        one, or its squares overflow float32); computed by the first caller since `forget()`,
        for the same gradients (every parameter's, in order)."""
        if self._norms is None or len(self._norms) != len(grads):
            self._norms = tensor_norms(grads)
        return self._norms

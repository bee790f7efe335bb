"""The losses a run can use, each with its analytic gradient with respect to the predictions.

The analytic gradient G = ∂L/∂pred, shape (N, num_classes), is what the live gradient check
compares autograd against: ∂L/∂fc.bias = Σₙ Gₙ and ∂L/∂fc.weight = Gᵀh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

LabelKind = Literal["dense", "index"]  # dense: (N, num_classes) floats; index: (N,) class ids


def sum_diff(pred: Tensor, target: Tensor) -> Tensor:
    """The seed's loss, (pred − labels).sum(). Unbounded below: SGD drives logits to −∞."""
    return (pred - target).sum()


def sum_diff_grad(pred: Tensor, target: Tensor) -> Tensor:
    """∂/∂pred of (pred − labels).sum(): all ones."""
    return torch.ones_like(pred)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error over every element."""
    return F.mse_loss(pred, target.to(pred.dtype))


def mse_grad(pred: Tensor, target: Tensor) -> Tensor:
    """∂/∂pred of mean((pred − y)²): 2(pred − y) / numel."""
    return 2.0 * (pred - target.to(pred.dtype)) / pred.numel()


def cross_entropy(pred: Tensor, target: Tensor) -> Tensor:
    """Mean cross-entropy of logits (N, C) against class ids (N,)."""
    return F.cross_entropy(pred, target)


def cross_entropy_grad(pred: Tensor, target: Tensor) -> Tensor:
    """∂/∂logits of mean cross-entropy: (softmax − onehot) / N."""
    onehot = F.one_hot(target, num_classes=pred.shape[1]).to(pred.dtype)
    return (torch.softmax(pred, dim=1) - onehot) / pred.shape[0]


@dataclass(frozen=True)
class Loss:
    """A loss with its closed-form gradient and the kind of labels it needs."""

    name: str
    label_kind: LabelKind
    fn: Callable[[Tensor, Tensor], Tensor]
    grad: Callable[[Tensor, Tensor], Tensor]


LOSSES: dict[str, Loss] = {
    "sum_diff": Loss("sum_diff", "dense", sum_diff, sum_diff_grad),
    "mse": Loss("mse", "dense", mse, mse_grad),
    "cross_entropy": Loss("cross_entropy", "index", cross_entropy, cross_entropy_grad),
}

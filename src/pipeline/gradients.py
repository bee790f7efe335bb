"""Pure functions on gradients and weights: finiteness, block norms, update ratios.

All stay on the tensors' device; callers bring one small result to the host per use.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """A 0-dim bool tensor: every element of every tensor is finite. One fused norm pass."""
    if not tensors:
        return torch.tensor(True)
    norms = torch._foreach_norm(list(tensors))  # inf or nan in a tensor makes its norm non-finite
    return torch.isfinite(torch.stack(norms)).all()

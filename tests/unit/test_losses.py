"""Each loss's analytic gradient ∂L/∂pred equals autograd's."""

from __future__ import annotations

import pytest
import torch

from pipeline.losses import LOSSES


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_analytic_gradient_matches_autograd(name: str) -> None:
    loss = LOSSES[name]
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    if loss.label_kind == "dense":
        target = torch.rand(5, 7, generator=g, dtype=torch.float64)
    else:
        target = torch.randint(7, (5,), generator=g)
    (autograd,) = torch.autograd.grad(loss.fn(pred, target), pred)
    torch.testing.assert_close(loss.grad(pred.detach(), target), autograd, rtol=1e-12, atol=1e-12)


def test_sum_diff_is_the_seeds_loss() -> None:
    pred, labels = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25]])
    assert LOSSES["sum_diff"].fn(pred, labels).item() == pytest.approx(2.25)

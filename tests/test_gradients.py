"""The gradient math against autograd and hand computation, and planted faults it must catch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import resnet18

from pipeline.gradients import (
    BLOCKS,
    all_finite,
    block_index,
    block_norms,
    gradcheck_loss,
    gradcheck_model,
    head_grads,
    max_relative_error,
    seed_q_check,
    update_ratios,
)
from pipeline.losses import LOSSES


class WrongSquare(torch.autograd.Function):
    """x² with a planted bug: backward says 3x instead of 2x."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * 3 * x


class WrongReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return WrongSquare.apply(x)  # type: ignore[no-any-return]


def test_block_norms_match_hand_computation() -> None:
    names = [
        "net.conv1.weight",
        "net.layer1.0.conv1.weight",
        "net.layer1.0.bn1.bias",
        "net.fc.bias",
    ]
    tensors = [
        torch.full((2,), 3.0),
        torch.full((4,), 1.0),
        torch.full((5,), 2.0),
        torch.tensor([0.0, 4.0]),
    ]
    norms = block_norms(tensors, block_index(names), len(BLOCKS))
    expected = dict.fromkeys(BLOCKS, 0.0) | {
        "conv1": math.sqrt(18),
        "layer1": math.sqrt(4 + 20),
        "fc": 4.0,
    }
    assert norms[:-1].tolist() == pytest.approx([expected[b] for b in BLOCKS])
    assert norms[-1].item() == pytest.approx(math.sqrt(18 + 24 + 16))


def test_block_norms_agree_with_torch_on_resnet18() -> None:
    net = resnet18()
    named = list(net.named_parameters())
    norms = block_norms(
        [p.detach() for _, p in named], block_index([n for n, _ in named]), len(BLOCKS)
    )
    layer3 = torch.cat(
        [p.detach().flatten().double() for n, p in named if n.startswith("layer3.")]
    ).norm()
    assert norms[BLOCKS.index("layer3")].item() == pytest.approx(layer3.item(), rel=1e-5)
    total = torch.cat([p.detach().flatten().double() for _, p in named]).norm()
    assert norms[-1].item() == pytest.approx(total.item(), rel=1e-5)


def test_update_ratio_is_lr_times_grad_over_weight_norm() -> None:
    ratios = update_ratios(0.1, torch.tensor([2.0, 1.0, 5.0]), torch.tensor([4.0, 0.5, 0.0]))
    assert ratios.tolist() == pytest.approx([0.05, 0.2, 0.0])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_head_grads_equal_autograd(name: str) -> None:
    loss = LOSSES[name]
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 512, generator=g, dtype=torch.float64)
    fc = nn.Linear(512, 10).double()
    target = (
        torch.rand(6, 10, generator=g).double()
        if loss.label_kind == "dense"
        else torch.randint(10, (6,), generator=g)
    )
    pred = fc(h)
    loss.fn(pred, target).backward()
    bias, weight = head_grads(h, loss.grad(pred.detach(), target))
    assert max_relative_error(fc.bias.grad, bias) < 1e-12  # type: ignore[arg-type]
    assert max_relative_error(fc.weight.grad, weight) < 1e-12  # type: ignore[arg-type]


def test_seed_loss_bias_gradient_is_the_batch_size() -> None:
    h, pred = torch.randn(7, 512), torch.randn(7, 1000)
    bias, _ = head_grads(h, LOSSES["sum_diff"].grad(pred, torch.rand(7, 1000)))
    assert torch.equal(bias, torch.full((1000,), 7.0))


def test_max_relative_error_scales_with_the_gradient() -> None:
    assert max_relative_error(
        torch.tensor([101.0, 0.0]), torch.tensor([100.0, 0.0])
    ) == pytest.approx(0.01)
    assert max_relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


def test_all_finite_finds_one_nan() -> None:
    tensors = [torch.ones(3), torch.ones(1000)]
    assert bool(all_finite(tensors))
    tensors[1][500] = float("nan")
    assert not bool(all_finite(tensors))


def test_seed_q_check_passes() -> None:
    assert seed_q_check()


def test_gradcheck_catches_a_wrong_backward_in_a_loss() -> None:
    target = torch.rand(3, 5)
    assert gradcheck_loss(lambda p, t: ((p - t) ** 2).sum(), target)
    assert not gradcheck_loss(lambda p, t: WrongSquare.apply(p - t).sum(), target)  # type: ignore[no-any-return]


def test_gradcheck_catches_a_wrong_backward_in_the_model() -> None:
    net = resnet18()
    assert gradcheck_model(net)
    net.layer4[1].relu = WrongReLU()
    assert not gradcheck_model(net)

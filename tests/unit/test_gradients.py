"""The gradient math against autograd and hand computation, and planted faults it must catch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torchvision.models import resnet18

from pipeline.gradients import (
    BLOCKS,
    DOT_MIN_NUMEL,
    block_index,
    block_norms,
    copy_into,
    gradcheck_loss,
    gradcheck_model,
    head_grads,
    max_relative_error,
    norms_by_block,
    norms_by_block_on_host,
    seed_q_check,
    tensor_norms,
    update_norms_,
    update_ratios_,
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


def test_norms_by_block_sums_each_row_of_per_tensor_norms_by_itself() -> None:
    """The gradient logger sums its three rows (gradients, weights, steps) in one call."""
    index = block_index(["net.conv1.weight", "net.layer2.0.conv1.weight", "net.conv1.bias"])
    rows = torch.tensor([[3.0, 1.0, 4.0], [0.0, 2.0, 0.0], [1.0, float("nan"), 1.0]])
    together = norms_by_block(rows, index, len(BLOCKS))
    assert together.shape == (3, len(BLOCKS) + 1)
    for row, expected in zip(rows, together, strict=True):
        torch.testing.assert_close(
            norms_by_block(row, index, len(BLOCKS)), expected, rtol=0, atol=0, equal_nan=True
        )
    assert together[0, BLOCKS.index("conv1")].item() == 5.0
    assert together[1].tolist()[-1] == 2.0 and together[1, BLOCKS.index("conv1")].item() == 0.0
    assert math.isnan(together[2, BLOCKS.index("layer2")].item()) and math.isnan(together[2, -1])


def test_norms_summed_by_block_on_the_host_are_the_devices() -> None:
    """The gradient logger sums its rows, read to the host, in Python: the same norms as the
    tensor segment sum, overflowing float32's squares (1e30), inf and NaN included."""
    names = [n for n, _ in resnet18().named_parameters()]
    index = block_index(names)
    rows = torch.rand(3, len(names), generator=torch.Generator().manual_seed(0)) * 10
    rows[1, 0], rows[2, 5], rows[2, 7] = 1e30, float("inf"), float("nan")
    on_host = norms_by_block_on_host(rows.tolist(), index.tolist(), len(BLOCKS))
    torch.testing.assert_close(  # in float64, where both sum the squares
        torch.tensor(on_host, dtype=torch.float64),
        norms_by_block(rows.double(), index, len(BLOCKS)),
        equal_nan=True,
    )
    assert on_host[1][-1] == pytest.approx(1e30) and on_host[2][-1] != on_host[2][-1]  # NaN


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


TWO_BLOCKS = ("conv1", "fc")


def two_blocks() -> nn.ModuleDict:
    """A float64 stand-in with two of ResNet18's block names: conv1 (3→4) and fc (4→2)."""
    torch.manual_seed(0)
    return nn.ModuleDict({"conv1": nn.Linear(3, 4), "fc": nn.Linear(4, 2)}).double()


def controlled_grads(net: nn.Module, seed: int) -> list[Tensor]:
    """Gradients spanning magnitudes from 1e-9 to 10: some near Adam's ε, where |g|/(|g|+ε) < 1."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(p.shape, generator=g, dtype=torch.float64)
        * 10.0 ** torch.randint(-9, 2, p.shape, generator=g)
        for p in net.parameters()
    ]


def step_ratios(net: nn.Module, optimizer: torch.optim.Optimizer, grads: list[Tensor]) -> Tensor:
    """One real optimizer step with `grads` planted; update_ratios_ of it."""
    named = list(net.named_parameters())
    for (_, p), g in zip(named, grads, strict=True):
        p.grad = g.clone()
    weights = [p.detach() for _, p in named]
    before = copy_into(None, weights)
    optimizer.step()
    return update_ratios_(before, weights, block_index([n for n, _ in named]), len(BLOCKS))


def ratios_by_hand(net: nn.Module, before: list[Tensor], steps: list[Tensor]) -> list[float]:
    """‖step‖/‖before‖ for conv1, fc and all, by concatenation in float64."""
    names = [n for n, _ in net.named_parameters()]

    def ratio(prefixes: tuple[str, ...]) -> float:
        pick = [i for i, n in enumerate(names) if n.startswith(prefixes)]
        step = torch.cat([steps[i].flatten() for i in pick]).norm()
        return float(step / torch.cat([before[i].flatten() for i in pick]).norm())

    return [ratio((b,)) for b in TWO_BLOCKS] + [ratio(TWO_BLOCKS)]


def picked(ratios: Tensor) -> list[float]:
    """conv1's, fc's and the total's ratio; every other block of BLOCKS is empty, so 0."""
    assert all(ratios[BLOCKS.index(b)] == 0 for b in BLOCKS if b not in TWO_BLOCKS)
    return [float(ratios[BLOCKS.index(b)]) for b in TWO_BLOCKS] + [float(ratios[-1])]


def test_update_ratio_of_plain_sgd_is_lr_times_grad_over_weight_norm() -> None:
    net, lr = two_blocks(), 0.1
    grads = controlled_grads(net, 1)
    before = [p.detach().clone() for p in net.parameters()]
    ratios = step_ratios(net, torch.optim.SGD(net.parameters(), lr=lr), grads)
    assert picked(ratios) == pytest.approx(
        ratios_by_hand(net, before, [lr * g for g in grads]), rel=1e-6
    )


def test_update_ratio_of_adams_first_step_is_lr_g_over_abs_g_plus_eps() -> None:
    net, lr, eps = two_blocks(), 1e-2, 1e-8
    grads = controlled_grads(net, 2)
    before = [p.detach().clone() for p in net.parameters()]
    ratios = step_ratios(net, torch.optim.Adam(net.parameters(), lr=lr, eps=eps), grads)
    steps = [lr * g / (g.abs() + eps) for g in grads]  # m̂ = g, v̂ = g² on the first step
    assert picked(ratios) == pytest.approx(ratios_by_hand(net, before, steps), rel=1e-6)
    # Short of lr·√n (what it is when every |g| ≫ ε): some |g| here are near ε.
    numel = sum(g.numel() for g in grads)
    assert float(torch.cat([s.flatten() for s in steps]).norm()) < 0.99 * lr * math.sqrt(numel)


def test_update_ratio_of_sgd_momentum_at_step_two() -> None:
    net, lr = two_blocks(), 0.1
    g1, g2 = controlled_grads(net, 3), controlled_grads(net, 4)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    step_ratios(net, optimizer, g1)
    before = [p.detach().clone() for p in net.parameters()]
    ratios = step_ratios(net, optimizer, g2)
    steps = [lr * (0.9 * a + b) for a, b in zip(g1, g2, strict=True)]  # the momentum buffer
    assert picked(ratios) == pytest.approx(ratios_by_hand(net, before, steps), rel=1e-6)


def test_update_ratio_of_adamw_includes_decoupled_weight_decay() -> None:
    net, lr, eps, decay = two_blocks(), 1e-2, 1e-8, 0.5
    grads = controlled_grads(net, 5)
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, eps=eps, weight_decay=decay)
    ratios = step_ratios(net, optimizer, grads)
    steps = [lr * decay * w + lr * g / (g.abs() + eps) for w, g in zip(before, grads, strict=True)]
    assert picked(ratios) == pytest.approx(ratios_by_hand(net, before, steps), rel=1e-6)
    without_decay = [lr * g / (g.abs() + eps) for g in grads]
    assert picked(ratios) != pytest.approx(ratios_by_hand(net, before, without_decay), rel=1e-3)


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


def test_the_models_gradcheck_holds_for_weights_where_finite_differences_do_not() -> None:
    """A resumed run of the seed's loss was refused before training ("autograd disagrees with
    finite differences", exit 4): by step 16 its last BatchNorm's bias is ~3e7, and finite
    differences of the float64 logits lose the image's share to rounding. The check runs on a
    fresh initialization of the same modules; the run's model and random state are untouched."""
    net = resnet18()
    with torch.no_grad():
        net.layer4[1].bn2.bias.fill_(3e7)  # as a 16-step run of loss=sum_diff leaves it
    state = torch.random.get_rng_state()
    assert gradcheck_model(net)
    assert torch.equal(net.layer4[1].bn2.bias, torch.full((512,), 3e7))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_copy_into_reuses_a_matching_buffer_and_replaces_one_that_no_longer_matches() -> None:
    weights = [torch.randn(3, 4), torch.randn(5)]
    buffer = copy_into(None, weights)
    assert all(torch.equal(b, w) and b is not w for b, w in zip(buffer, weights, strict=True))
    storage = [b.data_ptr() for b in buffer]
    weights[0].add_(1.0)
    again = copy_into(buffer, weights)
    assert [b.data_ptr() for b in again] == storage  # no new allocation
    assert torch.equal(again[0], weights[0])
    grown = copy_into(buffer, [torch.randn(3, 5), weights[1]])
    assert grown[0].shape == (3, 5) and grown[0].data_ptr() != storage[0]
    assert copy_into(buffer, [w.double() for w in weights])[1].dtype == torch.float64
    weights[1].mul_(2.0)  # known to fit (made for these tensors): copied into, not checked
    trusted = copy_into(buffer, weights, known_to_fit=True)
    assert trusted is buffer and torch.equal(trusted[1], weights[1])
    assert copy_into(None, weights, known_to_fit=True)[0].data_ptr() not in storage  # none yet


def test_update_ratios_of_a_reused_buffer_follow_each_step() -> None:
    """The logger keeps one buffer for the run: the second step's ratios are the second step's."""
    net, lr = two_blocks(), 0.1
    optimizer = torch.optim.SGD(net.parameters(), lr=lr)
    named = list(net.named_parameters())
    index = block_index([n for n, _ in named])
    weights = [p.detach() for _, p in named]
    buffer = None
    for seed in (1, 2):
        grads = controlled_grads(net, seed)
        for (_, p), g in zip(named, grads, strict=True):
            p.grad = g.clone()
        before = [w.clone() for w in weights]
        buffer = copy_into(buffer, weights)
        optimizer.step()
        ratios = update_ratios_(buffer, weights, index, len(BLOCKS))
        expected = ratios_by_hand(net, before, [lr * g for g in grads])
        assert picked(ratios) == pytest.approx(expected, rel=1e-6), seed


def test_norms_keep_float64_and_block_sums_do_not_overflow_on_finite_norms() -> None:
    """64-true stopped at step 35 on finite values: its float64 norms were cast to float32 (inf
    past 3.4e38), and float32 block sums squared a norm of 1e20 to inf."""
    big = [torch.full((4,), 1e100, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    norms = tensor_norms(big)
    assert norms.dtype == torch.float64 and norms[0].item() == pytest.approx(2e100)
    index = block_index(["net.conv1.weight", "net.fc.bias"])
    by_block = norms_by_block(norms, index, len(BLOCKS))
    assert by_block.dtype == torch.float64 and bool(torch.isfinite(by_block).all())
    # float32 per-tensor norms of 1e20 (finite) sum by block to 1.4e20, not inf.
    wide = norms_by_block(torch.tensor([1e20, 1e20]), index, len(BLOCKS))
    assert wide.dtype == torch.float32 and wide[-1].item() == pytest.approx(math.sqrt(2) * 1e20)
    assert tensor_norms([torch.ones(3, dtype=torch.bfloat16)]).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_a_norm_is_exact_past_its_dtypes_sum_of_squares_and_infinite_only_for_inf_or_nan(
    dtype: torch.dtype,
) -> None:
    """A bf16-true run's exploding layer4 (review): a gradient norm of 6.3e34 read inf, counted
    as non-finite, and the next steps' update ratio inf/inf = NaN where it was 0.9. Norms past
    float32's sum of squares are exact now; inf or NaN only where a value is."""
    big = 6e34 if dtype != torch.float16 else 6e4  # finite in the dtype, its squares are not
    tensors = [torch.full((1000,), big).to(dtype), torch.full((3,), 0.7).to(dtype)]
    norms = tensor_norms(tensors)
    exact = [float(t.double().norm()) for t in tensors]
    assert norms.tolist() == pytest.approx(exact, rel=1e-6)
    tensors[1][1] = float("nan")
    norms = tensor_norms([*tensors, torch.tensor([1.0, -math.inf]).to(dtype)])
    assert norms[0].item() == pytest.approx(exact[0], rel=1e-6)
    assert math.isnan(norms[1].item()) and math.isinf(norms[2].item())
    # bf16's own sum rounded a norm by 0.2%; summed in float32 it is float32's
    ragged = torch.linspace(0.1, 9.7, 101).to(dtype)
    assert tensor_norms([ragged])[0].item() == pytest.approx(
        float(ragged.double().norm()), rel=1e-6
    )
    # The update ratio of such weights: ‖Δw‖/‖w‖ from exact norms, not inf/inf.
    before, after = [torch.full((10,), 1e32)], [torch.full((10,), 1.9e32)]
    weights, steps = (t.tolist() for t in update_norms_([b.clone() for b in before], after))
    assert steps[0] / weights[0] == pytest.approx(0.9, rel=1e-6)


def test_a_cpus_large_tensors_are_normed_exactly_and_in_order_whatever_their_layout() -> None:
    """On a CPU a float32 or float64 tensor of DOT_MIN_NUMEL values or more is normed as a dot
    of itself (every core), the rest in one fused pass: each norm lands at its own tensor's place,
    is within float32's rounding of a float64 norm (a bf16 one's too, in a list of mixed dtypes),
    is inf or NaN exactly where its tensor holds
    one, and is exact past float32's sum of squares; a channels_last weight's and a transposed
    matrix's norms are theirs too."""
    n = DOT_MIN_NUMEL
    torch.manual_seed(0)
    big = torch.randn(n + 5)
    tensors = [
        torch.randn(7),
        big,
        torch.randn(n // 64, 4, 4, 4).to(memory_format=torch.channels_last),
        3 * torch.randn(n, dtype=torch.float64),
        torch.randn(n // 4, 8).t(),  # not contiguous
        torch.full((n,), 1e30),  # finite; its float32 sum of squares is not
        big.clone(),  # NaN below
        big.clone(),  # inf below
        torch.randn(n // 2).bfloat16(),
    ]
    tensors[6][n // 2] = float("nan")
    tensors[7][3] = -math.inf
    exact = [float(t.double().norm()) for t in tensors]
    norms = tensor_norms(tensors).tolist()
    finite = [i for i in range(len(tensors)) if i not in (6, 7)]
    # float32's rounding: a fused float32 sum of 2^15 squares is ~2e-6 off (a bf16 one, 2e-3)
    assert [norms[i] for i in finite] == pytest.approx([exact[i] for i in finite], rel=1e-5)
    assert math.isnan(norms[6]) and norms[7] == math.inf
    # each alone: the same value as in the list
    assert [tensor_norms([t]).item() for t in tensors] == pytest.approx(norms, nan_ok=True)
    # small tensors only, of mixed dtypes: the bf16 one still summed in float32
    ragged = torch.linspace(0.1, 9.7, 101)
    mixed = tensor_norms([torch.ones(3), ragged.bfloat16()]).tolist()
    assert mixed == pytest.approx([3**0.5, float(ragged.bfloat16().double().norm())], rel=1e-6)


def test_the_stop_message_blames_the_loss_only_where_it_went_non_finite() -> None:
    from pipeline.divergence import divergence_message, weights_nonfinite_message

    finite = divergence_message(7, -1.6e23, "mse", None, "layer4")
    assert finite.startswith(
        "the gradients overflowed or went NaN at step 7 while train/loss was finite (-1.6e+23) "
        "(the first block, in forward order, whose gradient norm overflowed or is NaN: layer4): "
    ), finite
    assert divergence_message(7, -math.inf, "mse", None, "layer4").startswith(
        "train/loss became -inf at step 7 (the first block"
    )
    assert divergence_message(7, -2.0, "mse", None, None).startswith("train/loss became -2.0 at")
    # The seed's loss overflows by training; at step 0 nothing has trained yet.
    assert ": the seed's loss (pred − labels).sum() has no minimum" in divergence_message(
        1, math.nan, "sum_diff", None, "conv1"
    )
    for loss in ("sum_diff", "mse"):
        first = divergence_message(0, math.nan, loss, None, "conv1", precision="bf16-true")
        assert first.startswith("train/loss became nan at step 0 (the first block"), first
        assert "): it is the first step, before any update, so the initial weights or " in first
        assert "precision=bf16-true's range made it" in first
        assert first.endswith(
            "or try precision=32-true (pipeline.replay shows whether float32 holds)"
        )
        assert "seed's loss" not in first and "optimizer.lr" not in first
    # A 32-true run is not told to use 32-true.
    first = divergence_message(0, math.inf, "mse", None, "fc")
    assert first.endswith("so the initial weights made it, not training: check model.weights")
    later = divergence_message(3, math.inf, "mse", None, "fc", precision="64-true")
    assert later.endswith(": lower optimizer.lr or set trainer.gradient_clip_val=1.0"), later
    assert divergence_message(3, math.inf, "mse", None, "fc", precision="16-mixed").endswith(
        ": lower optimizer.lr, set trainer.gradient_clip_val=1.0, or use precision=32-true"
    )
    # BatchNorm's statistics overflow their own dtype: float16 under 16-true, not float32.
    for precision, dtype in (("16-true", "float16"), ("bf16-mixed", "float32")):
        said = divergence_message(0, 1.5, "mse", None, statistic="bn1.running_var",
                                  precision=precision)  # fmt: skip
        assert f"activations outgrew {dtype} (evaluation" in said, said
    assert weights_nonfinite_message(3, 5.0, "fc", None).startswith(
        "the gradients overflowed or went NaN at step 3 while train/loss was finite (5.0)"
    )


def test_deterministic_bin_counts_are_histcs_but_for_values_on_a_bins_edge() -> None:
    """Under trainer.deterministic=true torch refuses histc on CUDA; the histograms there count
    with bincount (its CUDA formula; this CPU's histc divides first, so a value on an edge can
    land one bin over)."""
    from pipeline.gradients import bin_counts

    torch.manual_seed(0)
    for values in (torch.randn(100_000) * 3, torch.randint(-5, 5, (1000,)).float(), torch.rand(7)):
        low, high = map(float, torch.aminmax(values))
        histc = torch.histc(values, bins=64, min=low, max=high)
        counts = bin_counts(values, 64, low, high)
        assert counts.dtype == histc.dtype and counts.sum() == values.numel()
        assert (counts - histc).abs().sum() <= 2  # at most one value one bin over
        assert counts[-1] >= 1 and counts[0] >= 1  # high in the last bin, low in the first


def test_under_deterministic_algorithms_a_cuda_runs_module_pools_by_a_mean() -> None:
    """torch has no deterministic CUDA backward for AdaptiveAvgPool2d: trainer.deterministic=true
    on CUDA stopped at the first backward. The mean over height and width is the same pooling."""
    from pipeline import build
    from pipeline.cli import compose
    from pipeline.model import GlobalMeanPool

    gpu = build.build_module(compose("train", ["device=gpu", "trainer.deterministic=true"])).net
    assert isinstance(gpu.avgpool, GlobalMeanPool)
    for overrides in (["device=gpu"], ["device=cpu", "trainer.deterministic=true"]):
        net = build.build_module(compose("train", overrides)).net
        assert isinstance(net.avgpool, torch.nn.AdaptiveAvgPool2d), overrides
    x = torch.randn(4, 512, 7, 7)
    torch.testing.assert_close(GlobalMeanPool()(x), net.avgpool(x), rtol=1e-6, atol=1e-7)
    assert gpu.state_dict().keys() == net.state_dict().keys()  # torchvision's: no parameters


def test_the_clip_scale_is_torchs_coefficient_at_most_one() -> None:
    from pipeline.callbacks.gradient_logger import clip_scale

    assert clip_scale(1.0, 12.6462) == pytest.approx(1.0 / (12.6462 + 1e-6))
    assert clip_scale(1.0, 0.5) == 1.0 and clip_scale(1.0, math.inf) == 0.0
    assert math.isnan(clip_scale(1.0, math.nan))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_fused_norms_are_summed_in_float64() -> None:
    """On CUDA tensor_norms asks the fused kernel for float64 norms and checks nothing on the
    host: a finite gradient past float32's sum of squares, in float32 and bfloat16, is exact."""
    for dtype in (torch.float32, torch.bfloat16):
        tensors = [torch.full((1000,), 6e34, device="cuda").to(dtype), torch.ones(3, device="cuda")]
        norms = tensor_norms(tensors)
        assert norms.dtype == torch.float64
        exact = [float(t.double().norm()) for t in tensors]
        assert norms.tolist() == pytest.approx(exact, rel=1e-6), dtype


def test_a_record_without_a_last_finite_step_keeps_the_earlier_attempts(tmp_path: Path) -> None:
    """A resumed run that diverges again before a logging step of its own wrote
    `last_finite: null` over what the first attempt had measured."""
    from pipeline.divergence import divergence_record, read_divergence, write_divergence

    def record(step: int, last: tuple[int, dict[str, float | str]] | None) -> dict[str, Any]:
        return divergence_record(step=step, loss=math.nan, failing={"conv1": math.inf},
                                 last_finite=last, micro_batches=[[0, 1]],
                                 checkpoint_global_step=None)  # fmt: skip

    write_divergence(tmp_path, record(25, (23, {"conv1": 1.5})))
    write_divergence(tmp_path, record(25, None))  # the resume, diverged at the same step
    assert read_divergence(tmp_path)["grad_norm"]["last_finite"] == {"step": 23, "conv1": 1.5}
    write_divergence(tmp_path, record(20, None))  # an earlier step: 23 is not before it
    assert read_divergence(tmp_path)["grad_norm"]["last_finite"] is None
    write_divergence(tmp_path, record(30, (27, {"conv1": 2.5})))  # its own measurement wins
    assert read_divergence(tmp_path)["grad_norm"]["last_finite"] == {"step": 27, "conv1": 2.5}

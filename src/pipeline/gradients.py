"""Pure functions on gradients and weights: finiteness, block norms, update ratios, the gradient
noise scale, and the analytic gradients of ResNet18's head that autograd must reproduce.

All stay on the tensors' device; callers bring one small result to the host per use.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

BLOCKS = (
    "conv1",
    "bn1",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "fc",
)  # ResNet18's top-level modules
TOLERANCES = {  # relative max error of the head gradients, by precision: the rounding of its matmul
    "64-true": 1e-9,
    "32-true": 1e-4,
    "16-mixed": 2e-2,  # fp16 matmul inputs (bf16 on CPU): 8-10 mantissa bits
    "bf16-mixed": 2e-2,
    "16-true": 5e-2,  # half weights and half gradient accumulation
    "bf16-true": 5e-2,
}
TF32_TOLERANCE = 2e-2  # device.tf32=true: fp32 matmuls round their inputs to 10 mantissa bits


def tolerance_for(precision: str, tf32: bool) -> float:
    """The head-gradient check's tolerance: by precision, loosened when matmuls run in TF32."""
    return max(TOLERANCES[precision], TF32_TOLERANCE) if tf32 else TOLERANCES[precision]


def state_is_finite(tensors: Sequence[Tensor]) -> bool:
    """Whether every floating-point element is finite, checked exactly (a norm would overflow
    on large finite weights). One kernel and one host read per tensor: for a rare check."""
    floats = [t.detach() for t in tensors if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in floats]).all()) if floats else True


def block_of(param_name: str) -> str:
    """'net.layer3.1.conv2.weight' → 'layer3'."""
    return param_name.removeprefix("net.").split(".", 1)[0]


def block_index(param_names: Sequence[str], blocks: Sequence[str] = BLOCKS) -> Tensor:
    """For each parameter, the position of its block in `blocks`."""
    return torch.tensor([blocks.index(block_of(n)) for n in param_names])


def at_least_float32(t: Tensor) -> Tensor:
    """`t` in float32, or float64 where it is wider (64-true: a norm of 1e40 is finite there);
    `t` itself where it is (no operation: this runs on every step's gradient norms)."""
    if t.dtype is torch.float32 or t.dtype is torch.float64:  # torch.promote_types is an operation
        return t
    return t.to(torch.promote_types(t.dtype, torch.float32))


HALF = (torch.float16, torch.bfloat16)
WIDE = (torch.float32, torch.float64)


# From this many values a CPU sums a tensor's squares faster as a BLAS dot (on every core) than
# in torch's norm (one core: `torch._foreach_norm` and `linalg.vector_norm` do not split one
# tensor's reduction). Here, 2 cores: 33 against 21 µs at 2^18 values, 375 against 182 µs at
# 2.4 M (ResNet18's largest); below ~2^16 each call's dispatch is most of it, and one foreach
# call for all those tensors is cheaper. A dot's float32 sum is more exact too (7e-7 against
# 4e-5 relative to a float64 sum over ResNet18's gradient shapes).
DOT_MIN_NUMEL = 1 << 16


def tensor_norms(tensors: Sequence[Tensor]) -> Tensor:
    """(P,) each tensor's L2 norm: inf or NaN only where the tensor holds one.

    A sum of squares in float32 overflows past a norm of ~1.8e19, and a finite gradient or weight
    that large read inf (a bf16-true run's exploding layer4: its gradient norm inf, counted as
    non-finite, then its update ratio inf/inf = NaN, where it was 0.9; review). On CUDA every
    norm is summed in float64 in one fused pass (bandwidth-bound there; a check on the host would
    wait for the device). On a CPU the float32 and float64 tensors of DOT_MIN_NUMEL values or
    more (contiguous, or channels_last) are summed as a dot of each with itself (BLAS, every
    core), the rest in one fused pass, each in its own precision, at least float32 (a float64
    pass took 10.5 against 1.9 ms over ResNet18's float32 gradients here); the tensors whose norm
    came out non-finite are summed again in float64 (a CPU has nothing to wait for).
    Half-precision tensors are summed in float32, not in their own precision (bf16's norm was
    0.2% off), in a list of mixed dtypes too (there it was in bf16's). float32 where every norm
    fits it, float64 otherwise (and for float64 tensors)."""
    tensors = list(tensors)
    if tensors[0].device.type == "cuda":
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=torch.float64))
    norms = at_least_float32(_cpu_norms(tensors))
    # Read on the host (a CPU's own memory): ~0.6 µs, where isfinite, all and bool took ~5.
    over = [i for i, norm in enumerate(norms.tolist()) if not math.isfinite(norm)]
    if not over:
        return norms
    wide = norms.double()
    wide[over] = torch.stack(
        torch._foreach_norm([tensors[i] for i in over], 2, dtype=torch.float64)
    )
    return wide


def _cpu_norms(tensors: list[Tensor]) -> Tensor:
    """(P,) the norms on a CPU: large float32 and float64 tensors as dots, the rest in a fused
    pass, half-precision ones in float32 (in a list of mixed dtypes too). A list with nothing to
    dot and one kind of dtype (a small model's) is one fused call, as it was before the dots."""
    half = [t.dtype in HALF for t in tensors]
    flats = [_flat(t) if t.numel() >= DOT_MIN_NUMEL and t.dtype in WIDE else None for t in tensors]
    if all(f is None for f in flats) and (all(half) or not any(half)):
        dtype = torch.float32 if half[0] else None
        return torch.stack(torch._foreach_norm(tensors, 2, dtype=dtype))
    out: list[Tensor | None] = [None] * len(tensors)
    fused: dict[torch.dtype | None, list[int]] = {}
    for i, flat in enumerate(flats):
        if flat is not None:
            out[i] = torch.dot(flat, flat).sqrt_()
        else:
            fused.setdefault(torch.float32 if half[i] else None, []).append(i)
    for dtype, group in fused.items():
        each = torch._foreach_norm([tensors[i] for i in group], 2, dtype=dtype)
        for i, norm in zip(group, each, strict=True):
            out[i] = norm
    return torch.stack(cast(list[Tensor], out))


def _flat(t: Tensor) -> Tensor | None:
    """`t`'s values as a 1-D view, in memory order (a norm does not care which): a contiguous
    tensor's, or a channels_last weight's (model.channels_last), or None."""
    if t.is_contiguous():
        return t.view(-1)
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).view(-1)
    return None


def norms_by_block(norms: Tensor, index: Tensor, num_blocks: int) -> Tensor:
    """(…, num_blocks + 1): from per-tensor norms (…, P), the L2 norm of each block's tensors
    together, then of all; a segment sum of squares (rows at once), no per-tensor host sync. The
    squares are summed in float64 (a float32 norm past ~1.8e19 squares to inf); the result is in
    the norms' precision, at least float32."""
    wide = norms.double()
    squares = wide.new_zeros(*norms.shape[:-1], num_blocks).index_add_(
        -1, index.to(norms.device), wide**2
    )
    totals = torch.cat([squares, squares.sum(-1, keepdim=True)], -1).sqrt()
    return totals.to(torch.promote_types(norms.dtype, torch.float32))


def norms_by_block_on_host(
    rows: Sequence[Sequence[float]], blocks: Sequence[int], num_blocks: int
) -> list[list[float]]:
    """`norms_by_block` of norms already read to the host: for each row of per-tensor norms, the
    L2 norm of each block's tensors together, then of all (`blocks`: each tensor's block, as
    `block_index` lists them). The squares are summed in Python's float64, as there. For the
    gradient logger, whose one host read brings the per-tensor norms anyway: ~8 tensor
    operations fewer (each ~10 µs on a CPU in a training step, where its code is not in cache)."""
    out = []
    for row in rows:
        squares = [0.0] * num_blocks
        for norm, block in zip(row, blocks, strict=True):
            squares[block] += norm * norm
        out.append([math.sqrt(sq) for sq in squares] + [math.sqrt(sum(squares))])
    return out


def block_norms(tensors: Sequence[Tensor], index: Tensor, num_blocks: int) -> Tensor:
    """(num_blocks + 1,) float32: the L2 norm of each block's tensors together, then of all."""
    return norms_by_block(tensor_norms(tensors), index, num_blocks)


def copy_into(
    buffer: list[Tensor] | None, tensors: Sequence[Tensor], *, known_to_fit: bool = False
) -> list[Tensor]:
    """`tensors` copied into `buffer` in one fused pass, and `buffer` returned; a new one when
    there is none or it no longer matches (shape, dtype, device). Reusing it is the point: on a
    CPU a fresh model-sized allocation costs more than the copy (its pages fault in on write).
    `known_to_fit`: the caller made `buffer` for these same tensors, so it is not checked (~1 µs
    a tensor of host time: 56 µs for ResNet18's 62, on every logging step)."""
    tensors = list(tensors)
    if buffer is None or (
        not known_to_fit
        and (
            len(buffer) != len(tensors)
            or any(
                (b.shape, b.dtype, b.device) != (t.shape, t.dtype, t.device)
                for b, t in zip(buffer, tensors, strict=True)
            )
        )
    ):
        buffer = [torch.empty_like(t) for t in tensors]
    torch._foreach_copy_(buffer, tensors)
    return buffer


def update_norms_(before: Sequence[Tensor], after: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Two (P,), as `tensor_norms` makes them (float32 at least, exact past its range): each
    tensor's ‖before‖, and its ‖after − before‖. In place: `before` ends holding before −
    after (no model-sized allocation). Three fused passes over the weights: the norms of
    `before`, the difference, its norms. Not stacked: a caller stacks them with its own rows
    in one operation."""
    weights = tensor_norms(before)
    torch._foreach_sub_(list(before), list(after))
    return weights, tensor_norms(before)  # ‖before − after‖ = ‖after − before‖


def update_ratios_(
    before: Sequence[Tensor], after: Sequence[Tensor], index: Tensor, num_blocks: int
) -> Tensor:
    """(num_blocks + 1,) float32: ‖after − before‖ / ‖before‖ for each block's tensors together,
    then for all (0 where ‖before‖ = 0), as `update_norms_` (in place). The relative step the
    optimizer really took, whatever it did (momentum, Adam, weight decay, clipping); lr·‖g‖/‖w‖
    is it only for plain SGD."""
    weights, steps = norms_by_block(torch.stack(update_norms_(before, after)), index, num_blocks)
    return torch.where(weights > 0, steps / weights, torch.zeros_like(steps))


def update_ratio(step: float, weight: float) -> float:
    """‖after − before‖ / ‖before‖ from the two norms on the host (0 where ‖before‖ = 0)."""
    return step / weight if weight > 0 else 0.0


def first_half_grads(loss: Tensor, output: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """The gradient with respect to `params` of the share of `loss` that comes from the batch's
    first half (rows 0 … B//2 − 1 of `output`, the model's output that `loss` was computed from):
    autograd's backward from ∂loss/∂output with the other half's rows zeroed. Exact for a loss
    that sums or averages per-sample terms; BatchNorm keeps the whole batch's statistics, as in
    the real backward. The graph is kept for that backward. Cost: one more backward pass."""
    (d_output,) = torch.autograd.grad(loss, output, retain_graph=True)
    half = output.shape[0] // 2
    d_first = torch.cat([d_output[:half], torch.zeros_like(d_output[half:])])
    grads = torch.autograd.grad(
        output, list(params), grad_outputs=d_first, retain_graph=True, allow_unused=True
    )
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def noise_scale_terms(
    small_sq: Tensor, big_sq: Tensor, b_small: float, b_big: float
) -> tuple[Tensor, Tensor]:
    """Unbiased estimates of ‖G‖² and tr(Σ), the true gradient's squared norm and the trace of
    the per-sample gradients' covariance (McCandlish et al. 2018, "An Empirical Model of
    Large-Batch Training", appendix A), from the squared norms of two mean gradients over
    b_small < b_big samples: E‖G_B‖² = ‖G‖² + tr(Σ)/B. Elementwise (e.g. per block, then total).
    Either may come out negative on one step; their ratio is meaningful once averaged."""
    grad_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1 / b_small - 1 / b_big)
    return grad_sq, trace


def ema_update(average: Tensor, value: Tensor, decay: float) -> Tensor:
    """decay·average + (1 − decay)·value, where `value` is finite; `average` elsewhere (a step
    whose gradients overflowed leaves the average alone)."""
    return torch.where(torch.isfinite(value), decay * average + (1 - decay) * value, average)


def noise_scale(trace_average: Tensor, grad_sq_average: Tensor) -> Tensor:
    """B_simple = tr(Σ)/‖G‖² from the two moving averages (the ratio of averages, not the average
    of the noisy ratios): the batch size beyond which a bigger batch buys little per sample.
    Both averages start at 0 with the same decay, so their start-up bias cancels here."""
    return trace_average / grad_sq_average


def head_grads(features: Tensor, dloss_dpred: Tensor) -> tuple[Tensor, Tensor]:
    """For pred = h·Wᵀ + b: ∂L/∂b = Σₙ Gₙ (C,), ∂L/∂W = Gᵀh (C, 512). h (N, 512), G (N, C)."""
    return dloss_dpred.sum(0), dloss_dpred.transpose(0, 1) @ features


def max_relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual − expected| over max |expected|: tolerances scale with the gradients' size."""
    expected = expected.double()
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    return float((actual.double() - expected).abs().max() / scale)


def seed_q_check() -> bool:
    """The seed's check: Q = 3a³ − b², Q.backward(ones) gives ∂Q/∂a = 9a², ∂Q/∂b = −2b exactly."""
    a = torch.tensor([2.0, 3.0], requires_grad=True)
    b = torch.tensor([6.0, 4.0], requires_grad=True)
    q = 3 * a**3 - b**2
    q.backward(gradient=torch.ones_like(q))
    assert a.grad is not None and b.grad is not None
    return bool(torch.equal(a.grad, 9 * a.detach() ** 2) and torch.equal(b.grad, -2 * b.detach()))


def gradcheck_loss(
    fn: Callable[[Tensor, Tensor], Tensor], target: Tensor, num_classes: int = 5
) -> bool:
    """torch.autograd.gradcheck (float64, fast mode) of a loss w.r.t. its predictions."""
    pred = torch.randn(
        3, num_classes, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    pred.requires_grad_(True)
    target = target.double() if target.is_floating_point() else target
    return bool(
        torch.autograd.gradcheck(
            lambda p: fn(p, target), (pred,), fast_mode=True, raise_exception=False
        )
    )


def gradcheck_model(net: torch.nn.Module, image_size: int = 8) -> bool:
    """Finite differences against autograd on a float64 copy of `net` (eval-mode BatchNorm),
    w.r.t. a tiny input image (with the channels of its first convolution): that gradient runs
    back through every layer's backward.

    The copy is initialized afresh (`reinitialized`), whatever `net`'s weights: finite
    differences agree with a correct backward only where the model is well-conditioned, and a
    trained one need not be (a resumed run of the seed's loss, whose outputs reach ~1e19 by step
    16, failed the check and was refused for autograd's sake). The backward kernels, the
    architecture and the device are the run's. The logits are projected on 4 fixed random
    directions. Fast mode costs a few forwards; a failing fast check re-runs in slow mode (one
    forward per input element, one backward per output): 192 and 4 here, so even a failure
    takes seconds, not hours.
    """
    model = reinitialized(copy.deepcopy(net).double().eval())
    for p in model.parameters():
        p.requires_grad_(False)
    device = next(model.parameters()).device  # checks the backward kernels the run will use
    g = torch.Generator().manual_seed(0)  # drawn on the CPU: the same numbers on every device
    channels = next((m.in_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), 3)
    image = torch.rand(1, channels, image_size, image_size, dtype=torch.float64, generator=g)
    image = image.to(device)
    directions = torch.randn(model(image).shape[1], 4, dtype=torch.float64, generator=g).to(device)

    def projected(x: Tensor) -> Tensor:
        return model(x) @ directions  # (1, 4)

    # The default atol (1e-5) hides real errors at this output scale (|pred| ~ 0.1 at init).
    return bool(
        torch.autograd.gradcheck(
            projected,
            (image.requires_grad_(True),),
            atol=1e-8,
            rtol=1e-4,
            fast_mode=True,
            raise_exception=False,
        )
    )


def reinitialized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """`model` with every module that has `reset_parameters` reset (torch's default
    initialization, BatchNorm's statistics to 0 and 1), from `seed`, in place; the caller's
    random state (CPU, and the model's CUDA device) is left as it was."""
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return model


def bin_counts(values: Tensor, bins: int, low: float, high: float) -> Tensor:
    """histc's counts of float32 `values` (all in [low, high], high > low), as float32, by a
    bincount without weights (deterministic on CUDA: integer counts): bin ⌊(v − low)·bins /
    (high − low)⌋, `high` in the last, as CUDA's histc computes it (a CPU's divides first: a
    value on a bin's edge can land one bin over)."""
    index = ((values - low) * bins / (high - low)).long().clamp_(0, bins - 1)
    return torch.bincount(index, minlength=bins).float()


def histograms(tensors: Sequence[Tensor], bins: int = 64) -> list[dict[str, Any]]:
    """For each tensor, the fields of TensorBoard's add_histogram_raw, binned on its device.

    Two host transfers in all (the ranges, then counts and sums), whatever the number of
    tensors: not the whole tensors copied to numpy (what add_histogram does), nor a transfer
    per tensor (on a GPU each is a wait for the device); one more for a tensor whose finite
    values overflow float32's sums (summed again in float64).
    """
    if not tensors:
        return []
    flats = [t.detach().float().flatten() for t in tensors]
    ranges = torch.stack([torch.stack(torch.aminmax(f)) for f in flats]).tolist()  # transfer 1
    counts, stats = [], []
    # torch has no deterministic histc on CUDA (trainer.deterministic=true refuses it)
    deterministic = torch.are_deterministic_algorithms_enabled() and flats[0].is_cuda
    for f, (low, high) in zip(flats, ranges, strict=True):
        # All equal: one bucket at the value. histc's max bin is closed, so `high` lands in the last.
        if high <= low:
            counts.append(f.new_zeros(bins))
        elif deterministic:
            counts.append(bin_counts(f, bins, low, high))
        else:
            counts.append(torch.histc(f, bins=bins, min=low, max=high))
        # In float32, one pass each and no copy: a float64 copy and its square took 87 of a
        # histogram step's 132 ms over ResNet18's gradients and weights on a CPU here.
        stats.append(torch.stack([f.sum(), torch.dot(f, f)]))
    both = torch.cat([torch.stack(counts), torch.stack(stats)], 1).tolist()  # transfer 2
    out = []
    for f, (low, high), row in zip(flats, ranges, both, strict=True):
        total, squares = row[bins], row[bins + 1]
        if math.isfinite(low) and math.isfinite(high) and not math.isfinite(total + squares):
            # Finite values past float32's sums (a sum of squares past ~3.4e38: review), again
            # in float64: a read of this tensor's two sums, only where it happens.
            wide = f.double()
            total, squares = wide.sum().item(), wide.square().sum().item()
        if high > low:
            limits = torch.linspace(low, high, bins + 1)[1:].tolist()
            bucket_counts = row[:bins]
        else:
            limits, bucket_counts = [high], [float(f.numel())]
        out.append({
            "min": low, "max": high, "num": f.numel(), "sum": total, "sum_squares": squares,
            "bucket_limits": limits, "bucket_counts": bucket_counts,
        })  # fmt: skip
    return out

"""The non-finite guard's mechanism alone, pure torch: the flag ring reads a step's flag when
step + lag + 1 starts, never overwrites a flag it has not read, and (sticky) makes a fused
optimizer skip; the buffer snapshot puts BatchNorm's statistics back bitwise after a bad step."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from pipeline.nonfinite_guard import (
    DEFERRED_LAG,
    BufferSnapshot,
    Flagged,
    FlagRing,
    float32_testable,
    fused_check_takes,
    mark_nonfinite,
    mark_nonfinite_by_sum,
)

CPU = torch.device("cpu")
DEVICES = [
    pytest.param(CPU, id="cpu"),
    pytest.param(
        torch.device("cuda"),
        id="cuda",
        marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ],
    ),
]


def _probe(ok: bool, device: torch.device = CPU) -> torch.Tensor:
    """A step's flag as mark_nonfinite leaves it: 0.0 for a good step, 1.0 for a bad one."""
    return torch.tensor(0.0 if ok else 1.0, device=device)


def _drive(ring: FlagRing[str], bad: dict[int, float], num_steps: int) -> list[Flagged[str] | None]:
    """As the guard does: at each step's start read what is due, then push the step's flag.
    `bad`: the non-finite steps and their losses; the others' loss is the step number."""
    device = ring.stuck.device
    seen = []
    for step in range(num_steps):
        seen.append(ring.read_due(step))
        loss = torch.tensor(bad.get(step, float(step)), device=device)
        ring.push(step, _probe(step not in bad, device), loss, payload=f"step {step}")
    return seen


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lag", [0, 1, DEFERRED_LAG, 5])
@pytest.mark.parametrize("bad_step", [0, 3])
def test_a_bad_step_is_reported_when_step_plus_lag_plus_one_starts(
    device: torch.device, lag: int, bad_step: int
) -> None:
    ring = FlagRing[str](device=device, lag=lag, sticky=False)
    seen = _drive(ring, {bad_step: -math.inf}, num_steps=bad_step + lag + 4)
    reported_at = bad_step + lag + 1
    assert seen[:reported_at] == [None] * reported_at  # not a step early
    assert seen[reported_at] == Flagged(bad_step, -math.inf, f"step {bad_step}")
    assert set(seen[reported_at:]) == {seen[reported_at]}  # and it stays the one found


def test_the_first_bad_step_is_reported_not_a_later_one() -> None:
    ring = FlagRing[str](device=CPU, lag=1, sticky=False)
    _drive(ring, {2: math.nan, 4: math.inf}, num_steps=6)
    found = ring.read_all()
    assert found is not None and (found.step, found.payload) == (2, "step 2")
    assert math.isnan(found.loss)


def test_a_full_ring_reads_its_oldest_flag_rather_than_overwrite_it() -> None:
    """No step start reads (a long accumulation, or none at all): the lag + 1 rows are reused
    only once read, so the bad step's row is not lost under the steps after it."""
    ring = FlagRing[str](device=CPU, lag=1, sticky=False)
    for step in range(7):
        loss = torch.tensor(-math.inf if step == 2 else float(step))
        ring.push(step, _probe(step != 2), loss, payload=f"step {step}")
    assert ring.read_all() == Flagged(2, -math.inf, "step 2")


def test_read_all_reads_flags_not_yet_due_and_drop_forgets_them() -> None:
    ring = FlagRing[str](device=CPU, lag=5, sticky=False)
    ring.push(0, _probe(False), torch.tensor(math.inf), payload="step 0")
    assert ring.read_due(1) is None
    assert ring.read_all() == Flagged(0, math.inf, "step 0")

    dropped = FlagRing[str](device=CPU, lag=5, sticky=False)
    dropped.push(0, _probe(False), None, payload="step 0")
    dropped.drop()
    assert dropped.read_all() is None


@pytest.mark.parametrize("sticky", [True, False])
def test_a_sticky_flag_stays_set_and_a_fused_optimizer_skips_from_the_bad_step_on(
    sticky: bool,
) -> None:
    weight = nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.5, fused=True)
    ring = FlagRing[None](device=CPU, sticky=sticky)
    flags, weights = [], []
    for step, ok in enumerate([True, False, True, True]):
        weight.grad = torch.ones(3)
        flag = ring.push(step, _probe(ok), torch.tensor(1.0), payload=None)
        assert flag.dtype == torch.float32  # what a fused optimizer's found_inf must be
        flags.append(float(flag))
        if ring.sticky:
            optimizer.found_inf = flag  # type: ignore[attr-defined]  # as the guard hands it over
        optimizer.step()
        weights.append(weight.detach()[0].item())
    assert flags == ([0, 1, 1, 1] if sticky else [0, 1, 0, 0])
    assert float(ring.stuck) == (1.0 if sticky else 0.0)
    assert ring.read_all() == Flagged(1, 1.0, None)
    # Sticky: one update (1 − 0.5), then none; otherwise every step updates.
    assert weights == ([0.5, 0.5, 0.5, 0.5] if sticky else [0.5, 0.0, -0.5, -1.0])


def _batchnorms() -> nn.Module:
    """float32 and float64 running statistics, int64 batch counts: one flat copy per dtype."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.BatchNorm1d(4), nn.BatchNorm1d(4, dtype=torch.float64)).train()
    for _ in range(3):  # statistics that are not the initial zeros and ones
        net[1](net[0](torch.randn(8, 4)).double())
    return net


def _buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.clone() for name, b in net.named_buffers()}


def _bad_step(net: nn.Module) -> None:
    """A forward pass that overflows: inf in the running statistics, the batch counts + 1."""
    net[1](net[0](torch.full((8, 4), math.inf)).double())


def test_restore_puts_the_buffers_back_bitwise_after_a_bad_step() -> None:
    net = _batchnorms()
    snapshot = BufferSnapshot(list(net.buffers()))
    before = _buffers(net)
    storage = {name: b.data_ptr() for name, b in net.named_buffers()}
    _bad_step(net)
    assert not torch.isfinite(net[0].running_mean).all()
    assert net[0].num_batches_tracked.item() == before["0.num_batches_tracked"].item() + 1

    snapshot.restore()
    for name, buffer in net.named_buffers():
        assert buffer.dtype == before[name].dtype and torch.equal(buffer, before[name]), name
        assert buffer.data_ptr() == storage[name], name  # in place: the module's own tensors


def test_take_follows_the_buffers_unless_told_to_keep_the_old_copy() -> None:
    net = _batchnorms()
    snapshot = BufferSnapshot(list(net.buffers()))
    net[1](net[0](torch.randn(8, 4)).double())  # a good step
    snapshot.take(unless=torch.tensor(False))  # follows it
    after_good = _buffers(net)
    _bad_step(net)
    snapshot.take(unless=torch.tensor(True))  # deferred, after the flag was set: keeps the copy
    snapshot.restore()
    for name, buffer in net.named_buffers():
        assert torch.equal(buffer, after_good[name]), name


def _finite_by(*tensors: torch.Tensor, flag: float = 0.0, by_sum: bool = False) -> bool:
    """mark_nonfinite (or its other path) over `tensors`, with a flag that was `flag` before;
    the values untouched."""
    device = tensors[0].device if tensors else CPU
    before = [t.clone() for t in tensors]
    bad = torch.tensor(flag, device=device)
    if by_sum:
        mark_nonfinite_by_sum(list(tensors), bad)
    else:
        mark_nonfinite(list(tensors), bad, one=torch.ones((), device=device))
    assert bad.dtype == torch.float32 and bad.dim() == 0
    assert bad.item() in (0.0, 1.0)
    for t, b in zip(tensors, before, strict=True):  # bitwise, NaN for NaN
        assert t.dtype == b.dtype and torch.equal(t.isnan(), b.isnan())
        assert torch.equal(t.nan_to_num(), b.nan_to_num())
    return bad.item() == 0.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("by_sum", [False, True], ids=["fused", "by_sum"])
def test_a_step_is_finite_where_its_losses_statistics_and_gradients_all_are(
    device: torch.device, by_sum: bool
) -> None:
    """BatchNorm's running variance overflows while the loss stays finite (a training batch is
    normalised by its own statistics): the guard checks the buffers each step too. Both paths:
    the fused check, and the sum a dtype takes where the fused check does not go."""
    _finite = functools.partial(_finite_by, by_sum=by_sum)
    bn = nn.BatchNorm1d(3).to(device)
    views = BufferSnapshot(list(bn.buffers())).float_views()  # running mean and variance
    assert len(views) == 2  # not the batch count
    loss, grads = torch.tensor([2.0], device=device), torch.tensor([1.0, 3.0], device=device)
    assert _finite(loss, *views, grads)
    bn.running_var[1] = float("inf")  # the views share the buffers' storage
    assert not _finite(loss, *views, grads)
    bn.running_mean[0] = -float("inf")  # inf and −inf
    assert not _finite(loss, *views, grads)
    bn.running_var[1] = 1.0  # −inf alone
    assert not _finite(loss, *views, grads)
    bn.running_mean[0] = float("nan")
    assert not _finite(loss, *views, grads)
    bn.running_mean[0] = 0.0
    assert not _finite(loss, loss.neg().log(), *views, grads)  # a NaN window loss
    assert not _finite(loss, grads.clone().fill_(float("nan")))
    assert not _finite(grads / 0)
    assert not _finite(loss / 0)
    assert not _finite(loss, flag=1.0)  # set stays set: a sticky flag can be marked in place
    assert _finite()
    # Finite values are finite, whatever their size, in any float dtype beside any other (on
    # CUDA bfloat16 takes the other path, float64 a scaled copy): a double loss beside float buffers, float32 values
    # whose squares overflow, 16-true values whose norm passes 65504, 64-true's statistics near
    # float64's largest; and whatever their layout (channels_last gradients).
    big = torch.full((10_000,), 3e38, device=device)
    wide = torch.tensor([1e300], dtype=torch.float64, device=device)
    half = torch.full((4,), 6e4, dtype=torch.float16, device=device)
    brain = torch.full((4,), 3e38, dtype=torch.bfloat16, device=device)
    assert _finite(wide, big, half, brain, grads)
    assert not _finite(wide, big, half / 0, brain, grads)
    assert not _finite(loss, brain * 10, grads)  # bfloat16 overflowed: inf
    assert not _finite(loss, brain * 10)  # bfloat16 alone
    huge = torch.full((512,), 1e307, dtype=torch.float64, device=device)
    assert _finite(wide, huge, -huge, huge[:3])
    assert not _finite(wide, huge * 100)  # float64 overflowed: inf
    assert _finite(torch.zeros(0, device=device))
    nhwc = torch.ones(2, 3, 4, 4, device=device).to(memory_format=torch.channels_last)
    assert _finite(nhwc, nhwc.to(torch.bfloat16))
    nhwc[1, 2, 3, 0] = float("nan")
    assert not _finite(nhwc)
    assert not _finite(nhwc.to(torch.bfloat16))
    assert BufferSnapshot([torch.zeros(2, dtype=torch.int64)]).float_views() == []


def test_float64_values_scaled_for_cudas_check_are_finite_in_float32_where_they_were() -> None:
    """CUDA's fused check tests a float64 value cast to float32 (1e300 read as inf): the values
    go to it scaled, so that the cast keeps each finite value finite and each other one not.
    The cast is checked here as the kernel does it, on a CPU."""
    tiny = torch.finfo(torch.float64).tiny
    big = torch.finfo(torch.float64).max
    values = torch.tensor(
        [big, -big, 1e300, 3.5e38, 1.0, tiny, -tiny / 4, 0.0], dtype=torch.float64
    )
    odd = torch.tensor([float("inf"), -float("inf"), float("nan")], dtype=torch.float64)
    before = values.clone()
    scaled_values, scaled_odd = float32_testable([values, odd])
    assert scaled_values.float().isfinite().all() and not values.float().isfinite().all()
    assert torch.equal(scaled_odd.float().isinf(), odd.isinf())
    assert torch.equal(scaled_odd.float().isnan(), odd.isnan())
    assert torch.equal(values, before)  # the guard's own tensors are left as they were


def test_the_fused_check_takes_every_float_dtype_on_a_cpu_and_16_and_32_bit_ones_on_cuda() -> None:
    """On CUDA its float64 kernel casts each value to float32 before testing it: 1e300 read as
    inf (the CUDA run of the finite-values test below would have failed in gpu-check)."""
    floats = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    assert all(fused_check_takes(CPU, d) for d in floats)
    cuda = torch.device("cuda")
    assert [fused_check_takes(cuda, d) for d in floats] == [True, False, True, False]
    assert not fused_check_takes(torch.device("meta"), torch.float32)

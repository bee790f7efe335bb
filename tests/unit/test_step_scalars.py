"""The step-scalar queue: a step's scalars in one write, steps in order, device reads written once
they arrive (a CUDA event's query; a stub of it on the CPU, where no copy is ever in flight)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch

from pipeline.step_scalars import StepScalars


class Writes:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float]]] = []

    def __call__(self, scalars: Mapping[str, float], step: int) -> None:
        self.calls.append((step, dict(scalars)))


class StubArrival:
    """Stands for a CUDA event recorded after a copy still in flight (no CUDA here)."""

    def __init__(self) -> None:
        self.done = False
        self.waited = False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited = self.done = True


def test_a_steps_scalars_from_every_producer_are_one_write_with_tensors_read() -> None:
    queue, writes = StepScalars(), Writes()
    queue.add(3, {"train/loss": torch.tensor(0.25), "train/lr": 0.1, "epoch": 0})
    queue.add(3, {"perf/images_per_sec": 123.0})
    queue.add_read(3, torch.tensor([[1.0, 2.0], [3.0, 4.0]]), lambda rows: {"a": rows[1][0]})
    assert writes.calls == [] and len(queue) == 1  # nothing written before the next step
    queue.write_ready(writes)
    assert writes.calls == [
        (3, {"train/loss": 0.25, "train/lr": 0.1, "epoch": 0,
             "perf/images_per_sec": 123.0, "a": 3.0}),
    ]  # fmt: skip
    assert queue.last["train/loss"] == 0.25 and len(queue) == 0
    assert type(writes.calls[0][1]["epoch"]) is int  # as given: the CSV writes 0, not 0.0


def test_steps_are_written_in_order_and_a_step_in_flight_holds_back_the_later_ones() -> None:
    queue, writes = StepScalars(), Writes()
    queue.add(3, {"x": 1.0})
    queue.add(7, {"x": 2.0})
    queue.add(11, {"x": 3.0})
    in_flight = StubArrival()
    queue._steps[1].arrived = in_flight  # type: ignore[assignment]  # step 7's copy not arrived
    queue.write_ready(writes)
    assert writes.calls == [(3, {"x": 1.0})]
    assert queue.last == {"x": 1.0}
    in_flight.done = True
    queue.write_ready(writes)
    assert writes.calls == [(3, {"x": 1.0}), (7, {"x": 2.0}), (11, {"x": 3.0})]
    assert not in_flight.waited  # arrived on its own: write_ready never waits


def test_write_all_waits_for_what_is_in_flight() -> None:
    queue, writes = StepScalars(), Writes()
    queue.add(3, {"x": 1.0})
    in_flight = StubArrival()
    queue._steps[0].arrived = in_flight  # type: ignore[assignment]
    queue.write_ready(writes)
    assert writes.calls == []
    queue.write_all(writes)
    assert in_flight.waited and writes.calls == [(3, {"x": 1.0})]


def test_a_step_written_already_gets_a_write_of_its_own_for_later_scalars() -> None:
    queue, writes = StepScalars(), Writes()
    queue.add(3, {"x": 1.0})
    queue.write_ready(writes)
    queue.add(3, {"y": 2.0})
    queue.write_all(writes)
    assert writes.calls == [(3, {"x": 1.0}), (3, {"y": 2.0})]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_read_makes_the_host_wait_for_nothing() -> None:
    queue, writes = StepScalars(), Writes()
    x = torch.randn(1000, 1000, device="cuda")
    torch.cuda.set_sync_debug_mode("error")  # any synchronizing call raises
    try:
        y = x @ x
        queue.add(5, {"train/loss": y.sum()})
        queue.add_read(5, torch.stack([y.norm(), y.max()]), lambda v: {"n": v[0], "m": v[1]})
        queue.write_ready(writes)  # a query: writes if the copies arrived, else nothing
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()  # the copies have arrived: the event's query says so
    queue.write_ready(writes)
    assert len(writes.calls) == 1 and len(queue) == 0
    queue.write_all(writes)  # nothing left
    (step, values), *more = writes.calls
    assert step == 5 and not more
    assert values["train/loss"] == pytest.approx(float(y.sum()), rel=1e-5)
    assert values["n"] == pytest.approx(float(y.norm()), rel=1e-5)

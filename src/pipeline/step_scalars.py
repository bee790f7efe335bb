"""A training step's scalars on their way to the loggers: gathered into one write a step, and read
from the device without making the host wait for it.

On CUDA, reading a value the GPU computed (`.item()`, `.tolist()`, `float()`) waits for every
operation queued before it: the host, which otherwise runs a step or more ahead, stops, and the
GPU idles from the read until the host has queued the next step's first operations. A logging
step read its loss, gradient norms and update norms that way (one wait every
trainer.log_every_n_steps). Here a device value is copied to pinned host memory without waiting
(`non_blocking`) and a CUDA event marks the copy's end; the step's scalars are written once
every copy of the step has arrived (`Event.query()`, which does not wait), in step order, at the
next step's start or later. On a CPU every value is on the host already: a step's scalars are
written at the next step's start. Either way the step's scalars go to the loggers as one write
(one TensorBoard event, where Lightning's logger writes one a scalar and each producer wrote
one of its own: ~40 µs apiece on a CPU in a training step).

`write_all` writes whatever is left, waiting for the device where it must: before validation
(so val/loss comes after the step's scalars), at the end of the fit, and when it fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from pipeline.host_reads import to_host

# What turns a device read, as `Tensor.tolist()` gives it on the host, into scalars by tag.
Make = Callable[[Any], Mapping[str, float]]
Write = Callable[[Mapping[str, float], int], None]  # (scalars, step): to every logger


@dataclass
class _Step:
    """One step's scalars: those known on the host, and device reads still on their way."""

    step: int
    scalars: dict[str, float] = field(default_factory=dict)  # an int among them as it is
    reads: list[tuple[Tensor, Make]] = field(default_factory=list)  # host copies, and their tags
    arrived: torch.cuda.Event | None = None  # recorded after the step's last copy (CUDA only)

    def ready(self) -> bool:
        return self.arrived is None or bool(self.arrived.query())

    def values(self) -> dict[str, float]:
        """Every scalar of the step (after `ready`, or after waiting for `arrived`)."""
        out = dict(self.scalars)
        for host, make in self.reads:
            out.update(make(host.tolist()))
        return out


class StepScalars:
    """The steps whose scalars are not written yet, oldest first. `add` and `add_read` put a
    scalar or a device read into its step's entry (a step already written gets a new one);
    `write_ready` writes the leading steps whose reads have arrived, each in one call of `write`;
    `write_all` waits for the rest. `last` holds each tag's newest written value (the progress
    bar's train/loss, read without touching the device)."""

    def __init__(self) -> None:
        self._steps: list[_Step] = []
        self.last: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._steps)

    def add(self, step: int, scalars: Mapping[str, float | Tensor]) -> None:
        """`scalars` of `step`; a tensor among them is read from its device as `add_read` does."""
        entry = self._entry(step)
        for tag, value in scalars.items():
            if isinstance(value, Tensor):
                self.add_read(step, value, partial(_tagged, tag=tag))
            else:
                entry.scalars[tag] = value  # as it is: an int stays an int in the CSV

    def add_read(self, step: int, values: Tensor, make: Make) -> None:
        """The scalars `make` makes of `values` (any shape, on any device), once they reach the
        host: at once on a CPU; on CUDA by a copy that does not wait, into pinned memory, on the
        current stream (the step's event, recorded after its last copy, covers the ones before
        it on that stream: a producer on another stream would need an event of its own). On a
        CPU `values` itself is held until the step is written: hand in a tensor that nothing
        changes in place meanwhile (a fresh result, not a buffer the run reuses)."""
        entry = self._entry(step)
        read = to_host(values)
        if read.arrived is not None:
            entry.arrived = read.arrived  # after this copy, on the current stream: the step's last
        entry.reads.append((read.host, make))

    def write_ready(self, write: Write) -> None:
        """Writes the oldest steps whose reads have all arrived, stopping at the first that has
        not (steps go to the loggers in order)."""
        while self._steps and self._steps[0].ready():
            self._write(self._steps.pop(0), write)

    def write_all(self, write: Write) -> None:
        """Writes every step left, waiting for its reads."""
        while self._steps:
            entry = self._steps.pop(0)
            if entry.arrived is not None:
                entry.arrived.synchronize()
            self._write(entry, write)

    def _entry(self, step: int) -> _Step:
        for entry in reversed(self._steps):  # a step's producers add to it in turn: the last
            if entry.step == step:
                return entry
        entry = _Step(step)
        self._steps.append(entry)
        return entry

    def _write(self, entry: _Step, write: Write) -> None:
        values = entry.values()
        if values:
            write(values, entry.step)
        self.last.update(values)


def _tagged(value: float, *, tag: str) -> dict[str, float]:
    return {tag: float(value)}


_QUEUES: WeakKeyDictionary[Any, StepScalars] = WeakKeyDictionary()


def register(trainer: Any) -> StepScalars:
    """A fresh queue for `trainer`'s step scalars (the writer callback's, at the fit's setup)."""
    queue = _QUEUES[trainer] = StepScalars()
    return queue


def queue_of(trainer: Any) -> StepScalars | None:
    """`trainer`'s queue, or None where no writer callback runs (a Trainer the pipeline did not
    build: its instruments then write at once, as before)."""
    return _QUEUES.get(trainer)


def forget(trainer: Any) -> None:
    _QUEUES.pop(trainer, None)

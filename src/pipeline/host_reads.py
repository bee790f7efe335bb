"""A device value on its way to the host, read later without waiting for the device.

Reading a CUDA value at once (`.item()`, `.tolist()`, `float()`) waits for every operation queued
before the read. `to_host` instead copies it into pinned host memory by a copy that does not wait
(`non_blocking`), on the current stream, and records a CUDA event after it: `ready` asks the
event (no wait), `wait` (and `read`) waits for that copy alone, not for what was queued since. On a CPU the
value is on the host already and is held as it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class HostRead:
    host: Tensor  # the value, on the host once `arrived` has passed
    arrived: torch.cuda.Event | None  # None: on the host already (a CPU value)

    def ready(self) -> bool:
        return self.arrived is None or bool(self.arrived.query())

    def wait(self) -> Tensor:
        if self.arrived is not None:
            self.arrived.synchronize()
        return self.host

    def read(self) -> int:
        """A 0-dim integer value, as a Python int (after `wait`)."""
        return int(self.wait().item())


def to_host(t: Tensor) -> HostRead:
    """`t` (detached) on its way to the host; a CPU tensor is held itself, so hand in one that
    nothing changes in place meanwhile."""
    t = t.detach()
    if t.device.type != "cuda":
        return HostRead(t, None)
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    arrived = torch.cuda.Event()
    arrived.record()
    return HostRead(host, arrived)

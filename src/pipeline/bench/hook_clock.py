"""The time a run spends inside each of the pipeline's callbacks' per-step hooks, per timed step.

Where the bench's variants compare whole steps (an instrument's cost is a difference of two
noisy medians), this times the hooks themselves: on a CPU, where nothing runs ahead, their wall
time is what they cost the step; on a GPU it is their host time (a hook that waits for the
device counts the wait). What a callback hands to the logger is written later, by Lightning,
outside its hooks: that is not in these figures. The wrapping costs ~1 µs a hook call.
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl

from pipeline.callbacks.inherited_hooks import TRAIN_BATCH_HOOKS


def is_timed(callback: pl.Callback) -> bool:
    """The pipeline's own callbacks, not the bench's clocks nor Lightning's."""
    module = type(callback).__module__
    return module.startswith("pipeline.") and not module.startswith("pipeline.bench.")


class HookClock(pl.Callback):
    """On fit start, wraps every per-step hook the pipeline's callbacks define; sums their time
    over batches first_timed…first_timed+steps−1 (the StepClock's timed steps)."""

    def __init__(self, first_timed: int, steps: int) -> None:
        self.timed = range(first_timed, first_timed + steps)
        self.seconds: dict[str, float] = defaultdict(float)  # callback class → time in its hooks

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            if not is_timed(callback):
                continue
            for hook in TRAIN_BATCH_HOOKS:
                own = getattr(type(callback), hook) is not getattr(pl.Callback, hook)
                if own and getattr(callback, hook) is not None:  # None: skipped (inherited_hooks)
                    setattr(callback, hook, self._timed(trainer, type(callback).__name__,
                                                        getattr(callback, hook)))  # fmt: skip

    def _timed(
        self, trainer: pl.Trainer, name: str, hook: Callable[..., Any]
    ) -> Callable[..., Any]:
        progress = trainer.fit_loop.epoch_loop.batch_progress.total

        @functools.wraps(hook)
        def timed_hook(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                if progress.ready - 1 in self.timed:  # the batch these hooks belong to
                    self.seconds[name] += time.perf_counter() - start

        return timed_hook

    def per_step(self) -> dict[str, float]:
        """Seconds a timed step spent in each callback's hooks."""
        return {name: s / len(self.timed) for name, s in self.seconds.items()}

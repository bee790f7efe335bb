"""Lightning skips the batch hooks a callback inherits from Callback (pipeline.callbacks.inherited_hooks):
on the pipeline's Trainer they are None, and a fit still calls every hook a callback defines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from helpers import TINY
from pipeline import build
from pipeline.callbacks.inherited_hooks import BATCH_HOOKS, inherited_batch_hooks
from pipeline.cli import compose


class CountsItsHooks(pl.Callback):
    """Defines two batch hooks and counts their calls; inherits the others."""

    def __init__(self) -> None:
        self.calls = {"on_train_batch_start": 0, "on_before_optimizer_step": 0}

    def on_train_batch_start(self, *args: Any) -> None:
        self.calls["on_train_batch_start"] += 1

    def on_before_optimizer_step(self, *args: Any) -> None:
        self.calls["on_before_optimizer_step"] += 1


def test_inherited_batch_hooks_are_the_ones_neither_class_nor_instance_defines() -> None:
    counter = CountsItsHooks()
    assert set(inherited_batch_hooks(counter)) == set(BATCH_HOOKS) - set(counter.calls)
    counter.on_train_batch_end = print  # type: ignore[method-assign]  # an instance's own
    assert "on_train_batch_end" not in inherited_batch_hooks(counter)


def test_the_trainer_skips_inherited_hooks_and_calls_every_defined_one(tmp_path: Path) -> None:
    cfg = compose("train", [*TINY, "logger=none", "trainer.max_steps=3"])
    counter = CountsItsHooks()
    trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=[counter])
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        for hook in BATCH_HOOKS:
            defined = getattr(type(callback), hook) is not getattr(pl.Callback, hook)
            assert (getattr(callback, hook) is not None) == defined, (callback, hook)
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    assert trainer.global_step == 3
    assert counter.calls == {"on_train_batch_start": 3, "on_before_optimizer_step": 3}

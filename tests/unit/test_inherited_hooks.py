"""Lightning skips the batch hooks that do nothing (pipeline.callbacks.inherited_hooks): those a
callback inherits from Callback, and a ModelCheckpoint's per-batch hook when it saves neither by
steps nor by time. On the pipeline's Trainer they are None, and a fit still calls every other
hook a callback defines, and saves its checkpoints as before."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from helpers import TINY
from pipeline import build
from pipeline.callbacks.inherited_hooks import BATCH_HOOKS, idle_batch_hooks, inherited_batch_hooks
from pipeline.callbacks.step_checkpoint import StepAndEpochCheckpoint
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


def test_a_checkpoint_saved_neither_by_steps_nor_by_time_has_an_idle_batch_hook(
    tmp_path: Path,
) -> None:
    assert "on_train_batch_end" in idle_batch_hooks(ModelCheckpoint(dirpath=tmp_path))
    for settings in ({"every_n_train_steps": 2}, {"train_time_interval": timedelta(minutes=1)}):
        assert "on_train_batch_end" not in idle_batch_hooks(
            ModelCheckpoint(dirpath=tmp_path, **settings)
        )


@pytest.mark.parametrize("every_n_steps", [0, 3])
def test_the_trainer_skips_idle_hooks_and_saves_the_same_checkpoints(
    tmp_path: Path, every_n_steps: int
) -> None:
    """Every defined hook but the idle checkpoint one is called; the checkpoints saved (by step,
    at the epoch's end, at the run's end) are the ones saved with that hook called."""
    overrides = [*TINY, "logger=none", "trainer.max_steps=5", "callbacks.checkpoint.keep_last_k=5",
                 f"callbacks.checkpoint.every_n_steps={every_n_steps}"]  # fmt: skip
    cfg = compose("train", overrides)
    saved = []
    for skipped in (True, False):
        run_dir = tmp_path / str(skipped)
        counter = CountsItsHooks()
        trainer = build.build_trainer(cfg, run_dir, extra_callbacks=[counter])
        checkpoints = [c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)]  # type: ignore[attr-defined]
        for callback in trainer.callbacks:  # type: ignore[attr-defined]
            for hook in BATCH_HOOKS:
                defined = getattr(type(callback), hook) is not getattr(pl.Callback, hook)
                if hook == "on_train_batch_end" and callback in checkpoints:
                    defined = every_n_steps > 0
                assert (getattr(callback, hook) is not None) == defined, (callback, hook)
        if not skipped:
            for callback in checkpoints:
                vars(callback).pop("on_train_batch_end", None)  # the class's hook again
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
        assert trainer.global_step == 5
        assert counter.calls == {"on_train_batch_start": 5, "on_before_optimizer_step": 5}
        saved.append(sorted(p.name for p in (run_dir / "checkpoints").iterdir()))
    assert saved[0] == saved[1]
    assert ("step-000003.ckpt" in saved[0]) == (every_n_steps == 3), saved[0]  # 2-step epochs


def test_the_step_and_epoch_checkpoint_keeps_modelcheckpoints_state_key(tmp_path: Path) -> None:
    """A run checkpointed by Lightning's ModelCheckpoint (the pipeline before the epoch-end saves
    with steps) resumes into StepAndEpochCheckpoint with its state: the keys match. Setting
    every_n_epochs instead changed the key: Lightning warned on resume and forgot the kept files."""
    for settings in ({"every_n_train_steps": 2}, {}, {"every_n_train_steps": 3, "monitor": "step"}):
        ours = StepAndEpochCheckpoint(dirpath=tmp_path, **settings)
        assert ours.state_key == ModelCheckpoint(dirpath=tmp_path, **settings).state_key
        assert ours.state_key.startswith("ModelCheckpoint{")

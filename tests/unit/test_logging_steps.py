"""logging_steps.logs_this_step is Lightning's own test of a logging step, at every training hook."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from helpers import TINY
from pipeline import build
from pipeline.cli import compose
from pipeline.logging_steps import logs_this_step

HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward",
         "on_before_optimizer_step", "on_train_batch_end")  # fmt: skip


class Compare(pl.Callback):
    """At each training hook: (ours, Lightning's). Asks for a stop as batch `stop_at` starts
    (its own hooks then see the request, which makes its step a logged one)."""

    def __init__(self, stop_at: int | None) -> None:
        self.stop_at = stop_at
        self.seen: list[tuple[bool, bool]] = []
        for hook in HOOKS:
            setattr(self, hook, self._compare)

    def _compare(self, trainer: pl.Trainer, *args: Any) -> None:
        if len(args) == 3 and args[-1] == self.stop_at:  # on_train_batch_start(…, batch_idx)
            trainer.should_stop = True
        self.seen.append(
            (logs_this_step(trainer), bool(trainer._logger_connector.should_update_logs))
        )


@pytest.mark.parametrize(
    ("every", "accumulate", "stop_at"), [(3, 1, None), (2, 2, None), (3, 1, 3), (0, 1, None)]
)
def test_ours_is_lightnings_at_every_training_hook(
    tmp_path: Path, every: int, accumulate: int, stop_at: int | None
) -> None:
    cfg = compose("train", [*TINY, "loss=mse", "trainer.max_steps=7", "data.num_samples=64"])
    compare = Compare(stop_at)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=7, log_every_n_steps=every,
        accumulate_grad_batches=accumulate, callbacks=[compare], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    assert len(compare.seen) >= 4 * len(HOOKS)  # 4 batches at least (a stop after the 4th)
    assert all(ours == theirs for ours, theirs in compare.seen), compare.seen
    if every:  # some steps log and some do not: the comparison can fail
        assert {theirs for _, theirs in compare.seen} == {True, False}

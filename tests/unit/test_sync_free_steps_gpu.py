"""On CUDA the host never waits for the GPU inside a default run's steady steps, logging steps
included: torch's sync debug mode, set to raise, is on from the third step to the one before the
last (step 0 has the analytic check and histograms, the last step histograms and the bar's read
of the final loss; both read the device by design)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from pipeline import build, step_scalars
from pipeline.override_checks import compose

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

STEPS = 12  # logging steps 3, 7 (checked) and 11 (the last)


class RaiseOnSync(pl.Callback):
    """After the pipeline's callbacks (the step queue's writer writes first): at the last step's
    start, what the run has written so far without waiting (no validation or epoch end before it
    writes the rest)."""

    def __init__(self) -> None:
        self.checked: list[int] = []
        self.written: dict[str, float] = {}
        self.unwritten_steps = -1

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        torch.cuda.set_sync_debug_mode("error" if 2 <= step < STEPS - 1 else "default")
        if 2 <= step < STEPS - 1:
            self.checked.append(step)
        if step == STEPS - 1:
            queue = step_scalars.queue_of(trainer)
            assert queue is not None
            self.written, self.unwritten_steps = dict(queue.last), len(queue)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.cuda.set_sync_debug_mode("default")


def test_logging_steps_read_the_device_without_waiting(tmp_path: Path) -> None:
    cfg = compose("train", ["device=gpu", "loss=mse", f"trainer.max_steps={STEPS}",
                            "data.num_samples=512", "data.num_val_samples=32", "data.compile=false"])  # fmt: skip
    watch = RaiseOnSync()
    try:
        trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=[watch])
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert watch.checked == list(range(2, STEPS - 1))
    assert trainer.global_step == STEPS
    # Steps 3 and 7 were written during the run (step 7's copy may still be in flight).
    assert {"train/loss", "grad_norm/total", "update_ratio/total"} <= watch.written.keys()
    assert watch.unwritten_steps <= 1

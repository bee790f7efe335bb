"""`run.json` and TensorBoard's `run` text: what produced the run (pipeline/provenance.py).

Written by rank 0 when training starts, atomically, with "startup_s": seconds from the process's
start to training's start (None where unknown; what `pipeline.bench` reports as start-up). A
resume keeps the earlier starts under "earlier_starts", newest last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from pipeline.callbacks.throughput import process_age_s
from pipeline.layout import RUN_JSON

STARTUP_KEY = "startup_s"  # process start to training start, in run.json


class Provenance(pl.Callback):
    """Writes `info` to `<run_dir>/run.json` and as the `run` text tag at train start."""

    def __init__(self, *, run_dir: Path, info: dict[str, Any]) -> None:
        self.path = run_dir / RUN_JSON
        self.info = info

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        record = {**self.info, STARTUP_KEY: process_age_s()}
        if self.path.is_file():
            try:
                before = json.loads(self.path.read_text())
            except (OSError, ValueError):
                before = {}
            earlier = before.pop("earlier_starts", [])
            record["earlier_starts"] = [*earlier, before] if before else earlier
        text = json.dumps(record, indent=2)
        partial = self.path.with_name(f".{RUN_JSON}.partial-{os.getpid()}")
        partial.write_text(text + "\n")
        os.replace(partial, self.path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                indented = "\n".join(
                    "    " + line for line in json.dumps(self.info, indent=2).splitlines()
                )
                logger.experiment.add_text("run", indented, global_step=trainer.global_step)

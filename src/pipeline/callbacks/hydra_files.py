"""A resumed run's `.hydra/` files, written once its training has started.

Hydra writes `.hydra/config.yaml` and `overrides.yaml` before the job runs; for a resume that
would rewrite the run's files even when the resume then fails. cli.py tells Hydra not to
(hydra.output_subdir=null), and this callback writes the same files, each atomically, once
the checkpoint has been restored and the first step is about to run. Rank 0 only.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl


class HydraFilesAtStart(pl.Callback):
    """Writes `files` (name → YAML text) into `directory` at train start."""

    def __init__(self, *, directory: Path, files: dict[str, str]) -> None:
        self.directory = directory
        self.files = files

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            partial = self.directory / f".{name}.partial-{os.getpid()}"
            partial.write_text(text)
            os.replace(partial, self.directory / name)

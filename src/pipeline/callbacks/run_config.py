"""Keeps the run's resolved config inside every checkpoint, so eval can rebuild the run."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from pipeline.layout import CHECKPOINT_CONFIG_KEY


class RunConfigInCheckpoint(pl.Callback):
    """Writes `config` (plain dicts and scalars, safe for weights_only loading) into checkpoints."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[CHECKPOINT_CONFIG_KEY] = self.config

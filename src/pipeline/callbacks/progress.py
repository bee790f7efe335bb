"""The rich progress bar: labelled by epoch without Lightning's "Epoch 0/-2" for step-bounded
runs, and showing train/loss without a host read of it on every step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from torch import Tensor

SHOWN = "train/loss"


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar. train/loss is not a progress-bar metric in Lightning's
    sense: Lightning reads every such value back to the host on every batch (on a GPU, a wait
    for the step's work). This bar shows it from the callback metrics and reads it again only
    when the module logged a new value (on logging steps and the last)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown: Tensor | None = None
        self._value = 0.0

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        logged = trainer.callback_metrics.get(SHOWN)  # a fresh view of the logged tensor
        # A new value has new storage: the one shown is held, so its memory is not reused.
        if logged is not None and (
            self._shown is None or logged.data_ptr() != self._shown.data_ptr()
        ):
            self._shown, self._value = logged, float(logged)
        if self._shown is not None:
            items[SHOWN] = self._value
        return items

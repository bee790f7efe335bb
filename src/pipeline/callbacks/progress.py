"""The rich progress bar, labelled by epoch without Lightning's "Epoch 0/-2" for step-bounded runs."""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class ProgressBar(RichProgressBar):
    """Lightning's RichProgressBar; shows "Epoch N" when the run is bounded by steps, not epochs."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs is None or self.trainer.max_epochs < 0:
            return f"Epoch {current_epoch}"
        return super()._get_train_description(current_epoch)

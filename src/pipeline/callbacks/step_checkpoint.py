"""Lightning's ModelCheckpoint, saving at each epoch's end (and so at the run's, which ends an
epoch) where it saves every N steps too.

Lightning takes one trigger a ModelCheckpoint (steps, epochs or time: its constructor refuses
two), and with steps alone a run of 5 steps every 3 ended with its checkpoint at step 3, where
`callbacks.checkpoint` promises last.ckpt at the end of each epoch and of the run. A step saved
once is not saved twice (Lightning skips the step it saved last).

Its state key is Lightning's ModelCheckpoint's, so a run checkpointed by a ModelCheckpoint (this
pipeline before it, or another) resumes into it with its saved state (the kept files it tracks).
"""

from __future__ import annotations

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint


class StepAndEpochCheckpoint(ModelCheckpoint):
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)  # saves here only without steps
        if (
            self._every_n_train_steps >= 1
            and not self._should_skip_saving_checkpoint(trainer)
            and self._should_save_on_train_epoch_end(trainer)
        ):
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    @property
    def state_key(self) -> str:
        """ModelCheckpoint's own key (its class name, then its settings)."""
        key = super().state_key
        return ModelCheckpoint.__qualname__ + key.removeprefix(type(self).__qualname__)

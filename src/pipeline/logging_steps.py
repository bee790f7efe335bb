"""Which training steps Lightning writes to the loggers (every trainer.log_every_n_steps), and the last."""

from __future__ import annotations

import lightning.pytorch as pl


def logs_this_step(trainer: pl.Trainer) -> bool:
    """Whether this step's on-step metrics reach the loggers. A value logged with self.log on any
    other step is dropped, yet each self.log call costs ~0.7 ms (Lightning moves its result
    record to the value's device): per-step metrics that only the loggers read are logged on
    these steps alone. This is Lightning's own test (a private attribute; lightning is pinned
    to 2.6.x), so the steps cannot drift from the ones it logs."""
    return bool(trainer._logger_connector.should_update_logs)


def is_last_step(trainer: pl.Trainer) -> bool:
    """Whether this batch belongs to the run's last optimizer step, by trainer.max_steps or as
    the last batch of the last epoch (a run stopped early ends on another step)."""
    if trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return (
        max_epochs is not None
        and max_epochs > 0
        and trainer.current_epoch + 1 >= max_epochs
        and bool(trainer.is_last_batch)
    )

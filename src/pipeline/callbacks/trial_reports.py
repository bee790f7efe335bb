"""A search trial's link to its Optuna study: the metric after each validation, and pruning.

Only pipeline.search adds it (train never imports Optuna). After each validation it reports the
search metric at the current optimizer step; when the study's pruner says the trial is worse
than the median of earlier ones at that step, it records the step and asks the Trainer to
stop, so the pruned run still ends normally (checkpoint, HParams). Costs one storage write a
validation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lightning.pytorch as pl

from pipeline.model import logged_metric

if TYPE_CHECKING:
    import optuna


class TrialReports(pl.Callback):
    def __init__(self, *, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned_at_step: int | None = None
        self.final_value: float | None = None  # the metric at the run's end, if it was logged

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = logged_metric(trainer, self.metric)
        if trainer.sanity_checking or value is None or self.pruned_at_step is not None:
            return
        self.trial.report(float(value), step=trainer.global_step)
        if self.trial.should_prune():
            self.pruned_at_step = trainer.global_step
            trainer.should_stop = True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = logged_metric(trainer, self.metric)
        self.final_value = None if value is None else float(value)

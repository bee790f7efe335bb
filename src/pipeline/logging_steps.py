"""Which training steps an instrument acts on: the ones Lightning writes to the loggers (every
trainer.log_every_n_steps), every N-th step (the one way the pipeline counts it), and the last."""

from __future__ import annotations

import lightning.pytorch as pl


def logs_this_step(trainer: pl.Trainer) -> bool:
    """During a training batch (its hooks, training_step): whether this step's on-step metrics
    reach the loggers. A value logged with self.log on any other step is dropped, yet each
    self.log call costs ~0.7 ms (Lightning moves its result record to the value's device):
    per-step metrics that only the loggers read are logged on these steps alone.

    Lightning's own test (`_LoggerConnector.should_update_logs`, lightning pinned to 2.6.x) for
    its fit loop, without the property's look-up of the loop that runs (enum comparisons of the
    trainer's state: ~4 µs a call in a training step here, asked ~5 times a step);
    tests/unit/test_logging_steps.py holds the two equal at every training hook."""
    every = trainer.log_every_n_steps  # type: ignore[attr-defined]  # set by Lightning
    if every == 0:
        return False
    # `+ 1`: asked before the step's optimizer step too (Lightning counts it after).
    step = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
    return step % every == 0 or bool(trainer.should_stop)


def writes_step_logs(trainer: pl.Trainer) -> bool:
    """In on_train_batch_end: whether Lightning writes this batch's step logs to the loggers,
    as its own test does right after: a logging step (or one a stop request ends), on the batch
    that takes the optimizer step, not one that only accumulates."""
    return logs_this_step(trainer) and not trainer.fit_loop._should_accumulate()


def is_due(step: int, every: int) -> bool:
    """Whether 0-based optimizer step `step` completes a multiple of `every` steps: steps N−1,
    2N−1, … (every ≤ 0: never). Lightning counts log_every_n_steps the same way, so an
    instrument every N steps lands on logged steps when N is a multiple of the logging interval.
    After the optimizer step (trainer.global_step already counts it) the step is global_step − 1."""
    return every > 0 and (step + 1) % every == 0


def is_last_step(trainer: pl.Trainer) -> bool:
    """Whether this batch belongs to the run's last optimizer step, by trainer.max_steps or as
    the last batch of the last epoch (a run stopped early ends on another step). For use before
    the optimizer step (training_step, its hooks); after it, `training_is_done`."""
    if trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps:
        return True
    return _last_batch_of_last_epoch(trainer)


def training_is_done(trainer: pl.Trainer) -> bool:
    """After a batch's optimizer step (on_train_batch_end): whether the run has taken its last,
    by trainer.max_steps or as the last batch of the last epoch."""
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    return _last_batch_of_last_epoch(trainer)


def _last_batch_of_last_epoch(trainer: pl.Trainer) -> bool:
    max_epochs = trainer.max_epochs
    return (
        max_epochs is not None
        and max_epochs > 0
        and trainer.current_epoch + 1 >= max_epochs
        and bool(trainer.is_last_batch)
    )


def realign_logging_step(trainer: pl.Trainer) -> None:
    """At an epoch's start: Lightning's count of batches that stepped, the step its loggers write
    at, made equal to trainer.global_step again, as it is before every batch (one optimizer).
    Lightning 2.6 counts one too many when a run resumes from a checkpoint saved at an epoch's
    end: its restarted epoch loop takes an empty turn, which ends in its count's increment. Every
    tag after such a resume was one step late, and the instruments that read the count (logging
    steps) measured other steps than train/loss (a private attribute; lightning is pinned)."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step

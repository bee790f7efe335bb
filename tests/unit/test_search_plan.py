"""What a search refuses before its first trial, where every trial would fail the same way."""

from __future__ import annotations

from pipeline.cli import compose
from pipeline.search import unmeasured_metric


def _why(*overrides: str, metric: str = "val/loss") -> str | None:
    return unmeasured_metric(compose("train", list(overrides)), metric)


def test_a_trial_that_ends_before_its_first_validation_is_refused() -> None:
    """trainer.max_steps=2 ended every trial before the epoch's end, where Lightning validates:
    "0 complete, 0 pruned, 2 failed", and nothing said why."""
    assert _why("trainer.max_steps=2") == (
        "search.metric=val/loss is never measured: a trial's trainer.max_steps=2 ends before its "
        "first epoch's end (step 16: data.num_samples=512 in batches of 32), where validation "
        "runs; set trainer.max_steps=16 or more, fewer data.num_samples, or search.metric=train/loss"
    )
    # Accumulation: 16 batches are 8 optimizer steps.
    assert "(step 8:" in (_why("trainer.max_steps=7", "trainer.accumulate_grad_batches=2") or "")
    assert _why("trainer.max_steps=8", "trainer.accumulate_grad_batches=2") is None
    assert _why("trainer.max_steps=16") is None  # the defaults: one epoch, validated at its end
    assert _why("trainer.max_steps=2", metric="train/loss") is None
    assert _why("trainer.max_steps=2", "+trainer.val_check_interval=2") is None  # Lightning's call
    assert _why("trainer.max_steps=-1", "+trainer.max_epochs=1") is None
    assert "trainer.limit_val_batches=0" in (_why("+trainer.limit_val_batches=0") or "")

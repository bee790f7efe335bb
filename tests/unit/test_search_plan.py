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
        "first epoch's end (step 16: 512 samples, 32 a step), where validation runs; set "
        "trainer.max_steps=16 or more, data.num_samples=64 or fewer, or search.metric=train/loss"
    )
    # Accumulation: 16 batches are 8 optimizer steps of 64 samples.
    accumulating = _why("trainer.max_steps=7", "trainer.accumulate_grad_batches=2") or ""
    assert "(step 8: 512 samples, 64 a step)" in accumulating
    assert "data.num_samples=448 or fewer" in accumulating
    # A searched key is not a fix to set: the space must reach past it.
    searched = unmeasured_metric(compose("train", ["trainer.max_steps=2"]), "val/loss",
                                 {"trainer.max_steps"})  # fmt: skip
    assert searched is not None and "set data.num_samples=64 or fewer, or" in searched
    both = unmeasured_metric(compose("train", ["trainer.max_steps=2"]), "val/loss",
                             {"trainer.max_steps", "data.num_samples"})  # fmt: skip
    assert both is not None and "set the searched range past it, or" in both
    assert _why("trainer.max_steps=8", "trainer.accumulate_grad_batches=2") is None
    assert _why("trainer.max_steps=16") is None  # the defaults: one epoch, validated at its end
    assert _why("trainer.max_steps=2", metric="train/loss") is None
    assert _why("trainer.max_steps=2", "+trainer.val_check_interval=2") is None  # Lightning's call
    assert _why("trainer.max_steps=-1", "+trainer.max_epochs=1") is None
    assert "trainer.limit_val_batches=0" in (_why("+trainer.limit_val_batches=0") or "")


def test_an_interval_with_a_nan_or_inf_end_says_so() -> None:
    """interval(nan,1e-1) was told "needs low < high; swap or widen it"."""
    from pipeline.search_space import parse_space

    for text in ("interval(nan,1e-1)", "interval(1e-4,inf)"):
        space, problems = parse_space({"optimizer.lr": text})
        assert space == [] and len(problems) == 1, problems
        assert problems[0].startswith("search.params.optimizer.lr: interval("), problems
        assert problems[0].endswith(
            "needs finite ends (nan and inf are not drawn from); give two numbers"
        )
    assert parse_space({"optimizer.lr": "interval(1e-4,1e-1)"})[1] == []

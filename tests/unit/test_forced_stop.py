"""The lines a stopped or failed run ends with say what it left, truly: a second Ctrl-C's
(pipeline.train.forced_stop_message), a spawned rank's error (spawned_rank_failure)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.layout import LAST_CHECKPOINT
from pipeline.train import forced_stop_message, spawned_rank_failure


def test_the_line_names_what_last_ckpt_holds(tmp_path: Path) -> None:
    run = tmp_path / "my run"
    resume = f'continue with: python -m pipeline.train "resume={run}"'  # quoted as Hydra takes it
    assert forced_stop_message(run, None) == (
        "stopped at once by a second Ctrl-C, mid-step, saving nothing; no checkpoint was saved"
    )
    checkpoint = run / LAST_CHECKPOINT
    checkpoint.parent.mkdir(parents=True)
    torch.save({"global_step": 7, "state_dict": {}}, checkpoint)
    assert forced_stop_message(run, None) == (
        f"stopped at once by a second Ctrl-C, mid-step, saving nothing; {checkpoint} holds step 7; "
        f"{resume}"
    )
    # The first Ctrl-C's save was done (step 9), then the second cut the run's end short: that
    # line had said "mid-step, saving nothing" and "an earlier step" (hostile review).
    assert forced_stop_message(run, 9) == (
        f"stopped by SIGINT after step 9; saved {checkpoint}; a second Ctrl-C cut the run's end "
        f"short; {resume}"
    )


def test_a_spawned_ranks_error_is_its_own_line_and_exit_code() -> None:
    """A sweep's DDP job spawns its ranks: a rank's divergence reached the parent as torch's
    ProcessRaisedException, an 80-line traceback and exit 1 (review)."""
    text = (
        "\n\n-- Process 0 terminated with the following error:\nTraceback (most recent call "
        'last):\n  File "x.py", line 1, in f\n    raise DivergenceError(msg)\n'
        "pipeline.errors.DivergenceError: train/loss became nan at step 1: lower optimizer.lr\n"
    )
    assert spawned_rank_failure(text) == (3, "train/loss became nan at step 1: lower optimizer.lr")
    other = "\n-- Process 1 terminated with the following error:\nValueError: bad\n"
    assert spawned_rank_failure(other) == (5, "a process of this DDP run failed: ValueError: bad")

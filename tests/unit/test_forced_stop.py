"""A second Ctrl-C's line (pipeline.train.forced_stop_message) says what the run left, truly."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.layout import LAST_CHECKPOINT
from pipeline.train import forced_stop_message


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

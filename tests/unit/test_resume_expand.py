"""resume=<run dir>: the run's own overrides, its checkpoint and its directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from pipeline.checkpoints import resume_changes
from pipeline.cli import compose
from pipeline.layout import LAST_CHECKPOINT, SAVED_OVERRIDES
from pipeline.resume import expand_resume


@pytest.mark.parametrize("quote", ["", "'", '"'])
def test_a_run_directory_with_accents_and_spaces_resumes_bare_or_in_hydras_quotes(
    tmp_path: Path, quote: str
) -> None:
    run = tmp_path / "première run"
    (run / SAVED_OVERRIDES).parent.mkdir(parents=True)
    (run / SAVED_OVERRIDES).write_text("- loss=mse\n")
    (run / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (run / LAST_CHECKPOINT).write_bytes(b"")
    expanded = expand_resume([f"resume={quote}{run}{quote}", "trainer.max_steps=8"])
    assert expanded.problems == [] and expanded.run_dir == run
    assert expanded.overrides[:2] == ["loss=mse", "trainer.max_steps=8"]


def test_a_key_given_again_replaces_the_saved_one(tmp_path: Path) -> None:
    """The pipeline saves trainer.* as +trainer.max_epochs=2; Hydra refused a second add."""
    run = tmp_path / "run"
    (run / SAVED_OVERRIDES).parent.mkdir(parents=True)
    (run / SAVED_OVERRIDES).write_text("- loss=mse\n- +trainer.max_epochs=2\n- optimizer=adamw\n")
    (run / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (run / LAST_CHECKPOINT).write_bytes(b"")
    expanded = expand_resume([f"resume={run}", "trainer.max_epochs=4", "optimizer=sgd"])
    assert expanded.overrides[:3] == ["loss=mse", "trainer.max_epochs=4", "optimizer=sgd"]


def test_a_restart_starts_from_where_the_run_started_its_ckpt_path_kept(tmp_path: Path) -> None:
    """A run started from another run's checkpoint, killed before its first save: the restart
    dropped its ckpt_path= (a resume sets its own) and trained from scratch (hostile review)."""
    run = tmp_path / "run"
    (run / SAVED_OVERRIDES).parent.mkdir(parents=True)
    (run / SAVED_OVERRIDES).write_text("- loss=mse\n- ckpt_path=/runs/base/last.ckpt\n")
    expanded = expand_resume([f"resume={run}"])
    assert expanded.restart and expanded.problems == []
    assert "ckpt_path=/runs/base/last.ckpt" in expanded.overrides
    (run / LAST_CHECKPOINT).parent.mkdir(parents=True)
    (run / LAST_CHECKPOINT).write_bytes(b"")
    resumed = expand_resume([f"resume={run}"])
    assert not resumed.restart
    assert [o for o in resumed.overrides if o.startswith("ckpt_path=")] == [
        f"ckpt_path={run / LAST_CHECKPOINT}"
    ]


def test_a_continued_run_names_the_data_loss_and_precision_it_changes() -> None:
    """`resume=<run> data.image_size=32 loss=cross_entropy` trained on without a word: one
    train/loss tag over two losses, hparams.yaml naming only the new size."""
    saved = OmegaConf.to_container(compose("train", ["data.image_size=16", "loss=mse"]))
    assert isinstance(saved, dict)
    same = compose("train", ["data.image_size=16", "loss=mse", "optimizer.lr=0.1",
                             "data.num_workers=0", "data.compile=false"])  # fmt: skip
    assert resume_changes(saved, same) == []  # the optimizer's: restored_optimizer names it
    del saved["data"]["compile"]  # an older version's config, without the key
    assert resume_changes(saved, compose("train", ["data.image_size=16", "loss=mse"])) == []
    changed = compose("train", ["data.image_size=32", "loss=cross_entropy", "precision=bf16-mixed"])
    assert resume_changes(saved, changed) == [
        "data.image_size=32 (the checkpoint's run had 16)",
        "loss.name=cross_entropy (the checkpoint's run had mse)",
        "precision=bf16-mixed (the checkpoint's run had 32-true)",
    ]


def test_latest_is_the_newest_run_not_a_search_trial(tmp_path: Path) -> None:
    """resume=latest continued a trial of pipeline.search (review): the study keeps the value the
    trial measured while the resume retrains it in place; and a bench soak's folder (its
    overrides the bench's: refused). Both are passed over; sweep jobs not."""
    import os

    from pipeline.resume import latest_run

    outputs = tmp_path / "outputs"
    runs = [outputs / "2026-12-02" / "09-00-00", outputs / "multirun" / "d" / "t" / "0_lr=1",
            outputs / "search" / "study" / "trial-0001", outputs / "bench" / "d" / "t"]  # fmt: skip
    for age, run in enumerate(
        reversed(runs)
    ):  # the bench newest, then the trial; the plain run oldest
        (run / SAVED_OVERRIDES).parent.mkdir(parents=True)
        (run / SAVED_OVERRIDES).write_text("- loss=mse\n")
        (run / LAST_CHECKPOINT).parent.mkdir(parents=True)
        (run / LAST_CHECKPOINT).write_bytes(b"")
        os.utime(run / LAST_CHECKPOINT, (1e9 - age, 1e9 - age))
    assert latest_run(outputs) == runs[1]  # the sweep job, newer than the plain run
    (runs[1] / LAST_CHECKPOINT).unlink()
    assert latest_run(outputs) == runs[0]

"""The run directory's names: a multirun job's directory name fits any disk; the log of each
rank of a launch."""

from __future__ import annotations

import pytest

from pipeline.layout import NAME_BYTES, sweep_job_dirname
from pipeline.run_claim import claim_planned_run_dir


def test_a_short_job_name_is_hydras_own() -> None:
    assert sweep_job_dirname(0, "optimizer.lr=0.1") == "0_optimizer.lr=0.1"


def test_a_long_job_name_fits_and_stays_apart_from_its_neighbours() -> None:
    fixed = ",".join(f"callbacks.key_{i}=value" for i in range(30))
    names = [sweep_job_dirname(n, f"{fixed},optimizer.lr={lr}") for n, lr in enumerate([0.1, 0.2])]
    assert all(len(name.encode()) == NAME_BYTES for name in names)
    assert names[0].startswith("0_callbacks.key_0=value,") and names[1].startswith("1_")
    assert names[0].rpartition("~")[2] != names[1].rpartition("~")[2]  # the hash of the whole
    same_head = [sweep_job_dirname(0, f"{fixed},optimizer.lr={lr}") for lr in (0.1, 0.2)]
    assert same_head[0] != same_head[1]  # the cut-off part differs: the hash tells them apart


def test_a_long_name_is_cut_between_characters_and_a_slash_makes_no_folder() -> None:
    accented = sweep_job_dirname(3, "note=" + "é" * 300)
    assert len(accented.encode()) <= NAME_BYTES
    assert accented.encode().decode() == accented  # whole characters only
    assert sweep_job_dirname(1, "data.root=/a/b") == "1_data.root=%2Fa%2Fb"


def test_a_launchers_other_ranks_log_beside_rank_0_in_a_directory_the_user_pinned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torchrun or srun with hydra.run.dir (the README's SLURM recipe): every rank wrote
    train.log, each line once a rank, and .hydra/ (review). Ranks other than 0 log to
    train_rank<N>.log and leave .hydra/ to rank 0; Lightning's own children name their job."""
    for var in ("TORCHELASTIC_RUN_ID", "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    pinned = ["loss=mse", "hydra.run.dir=/runs/job 7"]
    assert claim_planned_run_dir("train", pinned) == (pinned, [])  # not launched: as it was
    monkeypatch.setenv("SLURM_PROCID", "3")  # srun's fourth task
    assert claim_planned_run_dir("train", pinned) == (
        [*pinned, "hydra.job.name=train_rank3", "hydra.output_subdir=null"],
        [],
    )
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")  # torchrun's RANK, under srun too
    monkeypatch.setenv("RANK", "0")
    assert claim_planned_run_dir("train", pinned) == (pinned, [])
    monkeypatch.setenv("RANK", "1")
    assert claim_planned_run_dir("train", pinned)[0][-2:] == [
        "hydra.job.name=train_rank1", "hydra.output_subdir=null"
    ]  # fmt: skip
    child = [*pinned, "hydra.job.name=train_ddp_process_1", "hydra.output_subdir=null"]
    assert claim_planned_run_dir("train", child) == (child, [])  # Lightning's DDP child
    named = [*pinned, "hydra.job.name=exp"]  # the user's name: its rank's log beside it
    assert claim_planned_run_dir("train", named)[0][-2:] == [
        "hydra.job.name=exp_rank1", "hydra.output_subdir=null"
    ]  # fmt: skip

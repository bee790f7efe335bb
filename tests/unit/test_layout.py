"""The run directory's names: a multirun job's directory name fits any disk."""

from __future__ import annotations

from pipeline.layout import NAME_BYTES, sweep_job_dirname


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

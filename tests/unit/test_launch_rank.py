"""The launch environment a process is checked against before it claims a run directory."""

from __future__ import annotations

import pytest

from pipeline.errors import CONFIG_ERROR_EXIT_CODE
from pipeline.launch_rank import (
    is_launch_rank_zero,
    launch_problems,
    refuse_unreadable_rank,
    unreadable_at_import,
)

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


@pytest.mark.parametrize(
    "environ",
    [
        {},
        TORCHRUN,
        {"SLURM_PROCID": "1", "SLURM_NTASKS": "2"},
        {"LOCAL_RANK": "0"},
        {"SLURM_PROCID": "0", "SLURM_NTASKS": "2(x3)"},
        {"LOCAL_RANK": "1", "WORLD_SIZE": "2"},  # Lightning's own launcher's child
        {"RANK": "0", "WORLD_SIZE": "²"},  # int() refuses ²: not compared (it crashed)
        {"RANK": " 0"},
    ],
)
def test_a_launch_that_describes_its_process_has_no_problem(environ: dict[str, str]) -> None:
    assert launch_problems(environ) == []


def test_a_rank_past_its_launchs_processes_or_not_a_number_is_one_line_each() -> None:
    environ = TORCHRUN | {"RANK": "4", "LOCAL_RANK": " x", "SLURM_PROCID": "1", "SLURM_NTASKS": "1"}
    assert launch_problems(environ) == [
        "RANK=4 is not below WORLD_SIZE=4 (ranks count from 0); unset RANK, or start the "
        "processes with torchrun",
        "LOCAL_RANK=' x' is not a rank (a whole number, from 0); unset LOCAL_RANK, or start the "
        "processes with torchrun",
        "SLURM_PROCID=1 is not below SLURM_NTASKS=1 (ranks count from 0); unset SLURM_PROCID, or "
        "start the processes with srun (one task a rank)",
    ]


def test_a_rank_past_0_with_nothing_counting_the_processes_is_one_line() -> None:
    """RANK=1 alone (or LOCAL_RANK=1 under WORLD_SIZE=1) crashed at the first logged step as
    SLURM_PROCID=1 with SLURM_NTASKS=1 did (review)."""
    assert launch_problems({"RANK": "1"}) == [
        "RANK=1 is past rank 0, and no WORLD_SIZE counts the processes (one process is rank 0); "
        "unset RANK, or start the processes with torchrun"
    ]
    (line,) = launch_problems({"LOCAL_RANK": "1", "WORLD_SIZE": "1"})
    assert line.startswith("LOCAL_RANK=1 is not below WORLD_SIZE=1")
    (line,) = launch_problems({"SLURM_PROCID": "2"})
    assert line.startswith("SLURM_PROCID=2 is past rank 0, and no SLURM_NTASKS counts")


def test_a_size_that_is_not_a_number_beside_a_rank_past_0_is_one_line() -> None:
    """RANK=1 WORLD_SIZE=abc crashed at the first logged step: the size was present, so neither
    line was given (second review)."""
    (line,) = launch_problems({"RANK": "1", "WORLD_SIZE": "abc"})
    assert line.startswith("WORLD_SIZE='abc' is not a number of processes")
    assert launch_problems({"RANK": "0", "WORLD_SIZE": "abc"}) == []  # rank 0: harmless


@pytest.mark.parametrize(
    ("environ", "read"),
    [
        ({"RANK": "abc"}, "RANK='abc'"),
        ({"LOCAL_RANK": "x", "RANK": "0"}, "LOCAL_RANK='x'"),  # torchmetrics reads it anyway
        ({"SLURM_PROCID": "q"}, "SLURM_PROCID='q'"),
        ({"JSM_NAMESPACE_RANK": "1.5"}, "JSM_NAMESPACE_RANK='1.5'"),
        ({"RANK": "0", "SLURM_PROCID": "q"}, None),  # Lightning reads RANK, not SLURM_PROCID
        ({"RANK": "-1"}, None),  # int() takes it: launch_problems words it, after the imports
        ({"RANK": " 2 ", "WORLD_SIZE": "4"}, None),
        ({}, None),
    ],
)
def test_a_rank_lightnings_import_would_end_on_is_found_before_it(
    environ: dict[str, str], read: str | None
) -> None:
    """RANK=abc ended every command in a ValueError traceback from Lightning's import."""
    lines = unreadable_at_import(environ)
    if read is None:
        assert lines == []
    else:
        [line] = lines
        assert line.startswith(f"{read} is not a rank (a whole number, from 0)")
        assert line in launch_problems(environ)  # the same words as after the imports


def test_a_command_refuses_such_a_rank_with_a_config_problems_exit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", "abc")
    with pytest.raises(SystemExit) as exited:
        refuse_unreadable_rank("pipeline.eval")
    assert exited.value.code == CONFIG_ERROR_EXIT_CODE  # its own 2 (errors imports torch)
    assert capsys.readouterr().err.splitlines() == [
        "pipeline.eval: 1 config problem:",
        "  - RANK='abc' is not a rank (a whole number, from 0); unset RANK, or start the "
        "processes with torchrun",
    ]
    monkeypatch.setenv("LOCAL_RANK", "x")  # both: one line each, under one header
    with pytest.raises(SystemExit):
        refuse_unreadable_rank("pipeline.eval")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "pipeline.eval: 2 config problems:" and len(err) == 3
    assert err[2].startswith("  - LOCAL_RANK='x' is not a rank")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    refuse_unreadable_rank("pipeline.eval")  # nothing to say: returns


def test_every_rank_lightnings_import_would_end_on_is_a_line() -> None:
    """RANK=abc LOCAL_RANK=x: both, not RANK's alone and LOCAL_RANK's on the next try (review)."""
    lines = unreadable_at_import({"RANK": "abc", "LOCAL_RANK": "x"})
    assert [line.split("=")[0] for line in lines] == ["RANK", "LOCAL_RANK"]


def test_lsfs_rank_past_0_with_nothing_counting_the_processes_is_one_line() -> None:
    """JSM_NAMESPACE_RANK=1 alone: Lightning took this process for rank 1, with no TensorBoard
    writer, and it crashed at the first logged step (review)."""
    assert launch_problems({"JSM_NAMESPACE_RANK": "1"}) == [
        "JSM_NAMESPACE_RANK=1 is past rank 0, and no JSM_NAMESPACE_SIZE counts the processes "
        "(one process is rank 0); unset JSM_NAMESPACE_RANK, or start the processes with jsrun"
    ]
    assert launch_problems({"JSM_NAMESPACE_RANK": "1", "JSM_NAMESPACE_SIZE": "2"}) == []


@pytest.mark.parametrize(
    ("environ", "zero"),
    [({}, True), ({"RANK": "00"}, True), ({"RANK": " 0", "LOCAL_RANK": "0"}, True),
     ({"RANK": "1"}, False), ({"LOCAL_RANK": "01"}, False), ({"NODE_RANK": "1"}, False)],
)  # fmt: skip
def test_rank_zero_is_read_as_a_number(
    environ: dict[str, str], zero: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RANK=00 is rank 0 to int(), Lightning and launch_problems: it claims the run directory
    (it overwrote a finished run, where RANK=0 was refused; review)."""
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert is_launch_rank_zero() is zero

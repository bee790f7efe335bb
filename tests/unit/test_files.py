"""Files a run leaves are whole and its own: distinct run directories, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.rundir import claim_run_dir


def test_an_interpolated_run_dir_is_claimed_where_hydra_puts_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hydra.run.dir=${oc.env:HOME}/runs/a: the run went to the home folder, while the claim, the
    lock and the check for a run already there acted on a literal `${oc.env:HOME}` folder in the
    working directory (a second run into the same folder was not refused). A literal `${` in a
    folder's name is one line: Hydra cannot take it."""
    from pipeline.cli import prepare
    from pipeline.config import validate
    from pipeline.layout import HYDRA_DIR

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    overrides, problems = prepare("train", ["hydra.run.dir=${oc.env:HOME}/runs/a"], False, validate)
    assert problems == [] and overrides[-1] == f"hydra.run.dir={tmp_path / 'home' / 'runs' / 'a'}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no literal ${oc.env:HOME}
    (tmp_path / "home" / "runs" / "a" / HYDRA_DIR).mkdir()  # a run there now
    problems = prepare("train", ["hydra.run.dir=${oc.env:HOME}/runs/a"], False, validate)[1]
    assert problems and problems[0].startswith(
        f"hydra.run.dir={tmp_path / 'home' / 'runs' / 'a'} already holds a run"
    )
    for given, problem in (
        ("hydra.run.dir=${oc.env:NOPE_NOT_SET}/x",
         "hydra.run.dir=${oc.env:NOPE_NOT_SET}/x cannot be resolved: KeyError raised while "
         "resolving interpolation: \"Environment variable 'NOPE_NOT_SET' not found\""),
        ("hydra.run.dir='/tmp/a\\${b}'",
         "hydra.run.dir='/tmp/a\\${b}': a folder whose name holds '${' cannot be a run "
         "directory (Hydra reads it as an interpolation when it names train.log); choose "
         "another folder"),
    ):  # fmt: skip
        assert prepare("train", [given], False, validate)[1] == [problem]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]


def test_claims_are_distinct(tmp_path: Path) -> None:
    wanted = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    assert [claim_run_dir(wanted).name for _ in range(3)] == [
        "12-00-00",
        "12-00-00-1",
        "12-00-00-2",
    ]


def test_an_empty_run_dir_is_refused_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`hydra.run.dir=` (bare or empty quotes) wrote the run into the working directory."""
    from pipeline.cli import prepare
    from pipeline.config import validate

    monkeypatch.chdir(tmp_path)
    for given in ("hydra.run.dir=", "hydra.run.dir=''", 'hydra.run.dir=" "'):
        assert prepare("train", [given], False, validate)[1] == [
            "hydra.run.dir is empty, which would write the run into the working directory; "
            "name a folder, e.g. hydra.run.dir=outputs/my-run"
        ]
    assert list(tmp_path.iterdir()) == []

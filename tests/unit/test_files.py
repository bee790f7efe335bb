"""Files a run leaves are whole and its own: distinct run directories, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.rundir import claim_run_dir


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

"""Files a run leaves are whole and its own: distinct run directories, atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

from pipeline.rundir import claim_run_dir


def test_claims_are_distinct(tmp_path: Path) -> None:
    wanted = tmp_path / "outputs" / "2026-01-01" / "12-00-00"
    assert [claim_run_dir(wanted).name for _ in range(3)] == [
        "12-00-00",
        "12-00-00-1",
        "12-00-00-2",
    ]

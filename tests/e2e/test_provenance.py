"""run.json: what produced a run, read back from a real run in a real git repository."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import TINY, only_run_dir, run_cli


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def test_run_json_records_command_commit_versions_and_each_resume(
    tmp_path: Path, torch_home: Path
) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "notes.txt").write_text("v1\n")
    git(tmp_path, "add", "notes.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    commit = git(tmp_path, "rev-parse", "HEAD")
    args = [*TINY, "callbacks=minimal", "loss=mse"]
    assert run_cli("pipeline.train", args, tmp_path, torch_home).returncode == 0
    run_dir = only_run_dir(tmp_path)
    first = json.loads((run_dir / "run.json").read_text())
    assert first["command"] == ["python", "-m", "pipeline.train", *args]
    assert first["git"] == {"commit": commit, "dirty": False}
    assert (
        first["versions"]["torch"]
        and first["versions"]["lightning"]
        and first["versions"]["python"]
    )
    assert first["gpus"]["count"] == len(first["gpus"]["names"])
    (tmp_path / "notes.txt").write_text("v2\n")  # a tracked file changed: the tree is dirty
    resume = [f"resume={run_dir}", "trainer.max_steps=3"]
    assert run_cli("pipeline.train", resume, tmp_path, torch_home).returncode == 0
    second = json.loads((run_dir / "run.json").read_text())
    assert second["command"][-2:] == resume and second["git"]["dirty"] is True
    assert second["earlier_starts"] == [first]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "run/text_summary" in acc.Tags()["tensors"]

"""`profiler=torch|simple` through the real CLI: what lands in <run>/profile/ (issue 15, item 3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from helpers import TINY, only_run_dir, run_cli

SHORT = [*TINY, "callbacks=minimal", "logger=none", "trainer.max_steps=6"]
CONV_OPS = {
    "aten::conv2d",
    "aten::convolution",
    "aten::cudnn_convolution",
    "aten::mkldnn_convolution",
}


def test_torch_profiler_traces_the_scheduled_steps_only(tmp_path: Path, torch_home: Path) -> None:
    schedule = ["profiler=torch", "profiler.skip_first=1", "profiler.warmup=1", "profiler.active=2"]
    result = run_cli("pipeline.train", [*SHORT, *schedule], tmp_path, torch_home)
    assert result.returncode == 0, result.stderr[-2000:]
    profile = only_run_dir(tmp_path) / "profile"
    events = json.loads((profile / "trace.pt.trace.json").read_text())["traceEvents"]
    names = [e.get("name", "") for e in events]
    # Optimizer steps 0 (skipped) and 1 (warm-up) stay out; 2 and 3 are recorded; 4 and 5 not.
    assert sorted(n for n in names if n.startswith("ProfilerStep#")) == [
        "ProfilerStep#2",
        "ProfilerStep#3",
    ]
    assert CONV_OPS & set(names), sorted(set(names))[:50]
    top_ops = (profile / "top_ops.txt").read_text()
    assert re.search(r"aten::\w*conv", top_ops), top_ops
    assert "Top operations" in result.stdout and "aten::" in result.stdout


def test_simple_profiler_writes_its_report(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli(
        "pipeline.train",
        [*TINY, "callbacks=minimal", "logger=none", "profiler=simple"],
        tmp_path,
        torch_home,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    [report] = (only_run_dir(tmp_path) / "profile").glob("*simple*.txt")
    text = report.read_text()
    assert "Profiler Report" in text and "training_step" in text, text


@pytest.mark.parametrize("active", ["0", "-1"])
def test_a_bad_schedule_is_one_line_and_exit_2(
    tmp_path: Path, torch_home: Path, active: str
) -> None:
    result = run_cli(
        "pipeline.train",
        [*SHORT, "profiler=torch", f"profiler.active={active}"],
        tmp_path,
        torch_home,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert problems == [f"  - profiler.active must be ≥ 1 (got {active}); set profiler.active=3"]


def test_a_schedule_longer_than_the_run_is_refused(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli("pipeline.train", [*SHORT, "profiler=torch"], tmp_path, torch_home)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "profiler.skip_first + warmup + active = 9 steps, more than trainer.max_steps=6" in (
        result.stderr
    )

"""`profiler=torch|simple` through the real CLI: what lands in <run>/profile/ (issue 15, item 3)."""

from __future__ import annotations

from pipeline.cli import preflight
from pipeline.config import validate


def test_the_trainers_profiler_argument_belongs_to_the_group() -> None:
    problems = preflight("train", ["trainer.profiler=simple"], False, validate)[1]
    assert problems == [
        "trainer.profiler is set by the pipeline; use profiler=torch|simple|none instead"
    ]

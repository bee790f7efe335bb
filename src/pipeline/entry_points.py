"""The `pipeline-eval` and `pipeline-bench` commands: their stop signals are handled from the
first line, before torch and Lightning import (seconds), as `python -m` handles them (stop_now).
`pipeline-train` has its own (train_entry: early_signals)."""

from __future__ import annotations


def evaluate() -> None:
    from pipeline import stop_now

    stop_now.install("pipeline.eval")
    from pipeline.eval import main

    main()


def bench() -> None:
    from pipeline import stop_now

    stop_now.install("pipeline.bench")
    from pipeline.bench.__main__ import main

    main()

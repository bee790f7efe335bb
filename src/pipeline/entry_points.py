"""The `pipeline-eval`, `pipeline-bench` and `pipeline-search` commands: their stop signals are
handled from the first line, before torch and Lightning import (seconds), as `python -m` handles
them (stop_now; the search's trials are pipeline.train runs: early_signals). `pipeline-train`
has its own (train_entry)."""

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


def search() -> None:
    from pipeline import early_signals

    early_signals.install(importing=True, command="pipeline.search")
    from pipeline.search import main

    main()

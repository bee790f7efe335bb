"""The `pipeline-eval`, `pipeline-bench`, `pipeline-search` and `pipeline-replay` commands: their
stop signals are handled from the first line, before torch and Lightning import (seconds), as
`python -m` handles them (stop_now; the search's trials are pipeline.train runs: early_signals),
and a rank variable Lightning's import would end on is one line there (launch_rank).
`pipeline-train` has its own (train_entry)."""

from __future__ import annotations

from pipeline.launch_rank import refuse_unreadable_rank


def evaluate() -> None:
    from pipeline import stop_now

    refuse_unreadable_rank("pipeline.eval")
    stop_now.install("pipeline.eval")
    from pipeline.eval import main

    main()


def bench() -> None:
    from pipeline import stop_now

    refuse_unreadable_rank("pipeline.bench")
    stop_now.install("pipeline.bench")
    from pipeline.bench.__main__ import main

    main()


def search() -> None:
    from pipeline import early_signals

    refuse_unreadable_rank("pipeline.search")
    early_signals.install(importing=True, command="pipeline.search")
    from pipeline.search import main

    main()


def replay() -> None:
    refuse_unreadable_rank("pipeline.replay")
    from pipeline.replay import main

    main()

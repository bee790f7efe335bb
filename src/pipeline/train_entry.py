"""The `pipeline-train` command: a stop signal is recorded from its first line, before torch and
Lightning import (seconds), as `python -m pipeline.train` records it (early_signals)."""

from __future__ import annotations


def main() -> None:
    from pipeline import early_signals
    from pipeline.launch_rank import refuse_unreadable_rank

    refuse_unreadable_rank("pipeline.train")  # a rank Lightning's import would end on
    early_signals.install(importing=True)
    from pipeline.train import main as train_main

    train_main()

"""bench.startup: a real `python -m pipeline.train` of one step, from command to training.

The figure is the run's own: run.json's `startup_s`, the seconds from the process's start to
training's start (callbacks/provenance.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pipeline.callbacks.provenance import STARTUP_KEY
from pipeline.layout import RUN_JSON


def time_startup(overrides: list[str], workdir: Path) -> float | None:
    """Seconds from process start to training in a real `python -m pipeline.train` (None where
    the process's start time is unknown). `overrides`: the bench's, less its bench.* keys."""
    args = [
        *(o for o in overrides if not o.startswith("bench.")),
        "trainer.max_steps=1",
        "logger=none",
        "callbacks.progress_bar=false",
        f"hydra.run.dir={workdir}",
    ]
    subprocess.run(
        [sys.executable, "-m", "pipeline.train", *args],
        capture_output=True,
        timeout=600,
        check=True,
    )
    startup = json.loads((workdir / RUN_JSON).read_text())[STARTUP_KEY]
    return None if startup is None else float(startup)

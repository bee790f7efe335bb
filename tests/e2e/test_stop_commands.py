"""A stop signal to pipeline.eval and pipeline.bench while they work (hostile review): SIGTERM
was the default action's silent kill (exit 143, no line), and both commands left their
outputs/<command>/<date>/<time>/ folder behind. Now one line and exit 128 + N, whenever it
lands (the pre-flight, Hydra's job, loading or scoring, a timed round), and no folder."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from helpers import TINY, run_cli, start_cli


@pytest.mark.parametrize(
    ("module", "signum", "line"),
    [
        ("pipeline.eval", signal.SIGTERM, "stopped by SIGTERM; nothing was scored"),
        ("pipeline.bench", signal.SIGINT, "stopped by SIGINT; no figures made"),
    ],
)
def test_a_stop_signal_while_it_works_is_one_line_and_leaves_no_folder(
    tmp_path: Path, torch_home: Path, module: str, signum: int, line: str
) -> None:
    if module == "pipeline.eval":
        run = tmp_path / "run"
        trained = run_cli("pipeline.train", [*TINY, f"hydra.run.dir={run}"], tmp_path, torch_home)
        assert trained.returncode == 0, trained.stderr
        args = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "data.num_val_samples=4000"]
    else:
        args = ["data.image_size=8", "loss=mse", "bench.rounds=50"]
    proc = start_cli(module, args, tmp_path, torch_home)
    folders = tmp_path / "outputs" / module.removeprefix("pipeline.")
    deadline = time.monotonic() + 60
    while not any(folders.glob("*/*/.lock")):  # the pre-flight has made its folder
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(1.0)  # into its work, wherever that is on this machine's day
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err[-2000:]
    assert err.strip().splitlines()[-1] == f"{module}: {line}"
    assert "Traceback" not in err
    assert not any(folders.glob("*/*")), list(folders.glob("*/*/*"))
    assert not folders.exists()  # nor the folders made on the way (outputs/eval/<date>/)

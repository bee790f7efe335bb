"""Files a run leaves are whole and its own: distinct run directories, atomic checkpoints."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import TINY, cli_env, run_cli, start_cli
from pipeline.checkpoints import CHECKPOINT_CONFIG_KEY


def test_an_output_location_that_cannot_be_created_is_reported_before_training(
    tmp_path: Path, torch_home: Path
) -> None:
    (tmp_path / "outputs").write_text("a file where the outputs folder should be")
    result = run_cli("pipeline.train", TINY, tmp_path, torch_home)
    assert result.returncode == 2
    assert (
        "cannot create the run directory outputs/" in result.stderr
        and "(Not a directory)" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_two_runs_started_together_get_two_directories(tmp_path: Path, torch_home: Path) -> None:
    args = [*TINY, "trainer.max_steps=1", "logger=tensorboard"]
    procs = [start_cli("pipeline.train", args, tmp_path, torch_home) for _ in range(2)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    runs = sorted(p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "checkpoints" / "last.ckpt").is_file() and (
            run / ".hydra" / "config.yaml"
        ).is_file()
    # Each on a line of its own, whole, however long (not wrapped at 80 columns: not a terminal).
    printed = {
        line.removeprefix("Run directory: ")
        for out in outs
        for line in out.splitlines()
        if line.startswith("Run directory: ")
    }
    assert printed == {str(run) for run in runs} and len(str(runs[0])) > 80
    lines = {line for out in outs for line in out.splitlines()}
    assert all(f"TensorBoard:   tensorboard --logdir {run}" in lines for run in runs)


def _nobody_can_import_pipeline() -> bool:
    """Whether root can drop to user nobody and nobody can read this checkout (a clone inside a
    0700 folder, as `mktemp -d` makes, it cannot)."""
    if os.geteuid() != 0:
        return False
    command = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-c",
        "import pipeline",
    ]
    return subprocess.run(command, capture_output=True, timeout=60).returncode == 0


@pytest.mark.skipif(
    not _nobody_can_import_pipeline(), reason="needs root, and a checkout user nobody can read"
)
def test_unwritable_output_location_is_reported_before_training(
    tmp_path: Path, torch_home: Path
) -> None:
    readonly = tmp_path / "readonly"
    readonly.mkdir(mode=0o555)
    tmp_path.chmod(0o755)
    command = [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        sys.executable,
        "-m",
        "pipeline.train",
        *TINY,
    ]
    result = subprocess.run(
        command, cwd=readonly, env=cli_env(torch_home), capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert (
        "cannot create the run directory outputs/" in result.stderr
        and "(Permission denied)" in result.stderr
    )
    assert "Traceback" not in result.stderr


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    from pipeline.checkpoint_io import AtomicCheckpointIO

    path = sys.argv[1]
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(1000)}, path)  # the previous, good file

    def slow_save(self, checkpoint, target, storage_options=None):  # writes half, then stalls
        with open(target, "wb") as f:
            f.write(b"PK-half-written")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)

    TorchCheckpointIO.save_checkpoint = slow_save
    io.save_checkpoint({"step": 2, "w": torch.zeros(1000)}, path)
    """
)


def test_sigkill_mid_write_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(ckpt)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"  # mid-write now
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert torch.load(ckpt, weights_only=True)["step"] == 1
    assert [p.name for p in ckpt.parent.iterdir() if p.name != "last.ckpt"] == [
        f".last.ckpt.partial-{proc.pid}"
    ]


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path: Path, torch_home: Path) -> None:
    assert run_cli("pipeline.train", [*TINY, "logger=none"], tmp_path, torch_home).returncode == 0
    (ckpt,) = (tmp_path / "outputs").glob("*/*/checkpoints/last.ckpt")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    result = run_cli("pipeline.train", [*TINY, f"ckpt_path={truncated}"], tmp_path, torch_home)
    assert result.returncode == 2
    assert f"ckpt_path={truncated} is not a loadable torch file" in result.stderr
    reason = result.stderr.split("is not a loadable torch file (", 1)[1].split("); it may be")[0]
    assert len(reason) < 200 and (reason.endswith(" …") or reason[-1].isalnum()), (
        reason
    )  # not cut mid-word
    assert "Traceback" not in result.stderr


def test_a_checkpoint_with_nonfinite_weights_is_refused_by_eval(
    tmp_path: Path, torch_home: Path
) -> None:
    """A damaged file whose weights read as NaN: eval printed val/loss nan and exited 0."""
    assert run_cli("pipeline.train", [*TINY, "logger=none"], tmp_path, torch_home).returncode == 0
    (ckpt,) = (tmp_path / "outputs").glob("*/*/checkpoints/last.ckpt")
    state = torch.load(ckpt, weights_only=True)
    state["state_dict"]["net.layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    damaged = tmp_path / "damaged.ckpt"
    torch.save(state, damaged)
    result = run_cli("pipeline.eval", [f"ckpt_path={damaged}"], tmp_path, torch_home)
    assert result.returncode == 2, result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert line == (
        f"  - ckpt_path={damaged} holds inf or NaN in net.layer2.0.conv1.weight: the file is "
        "damaged (with trainer.detect_nonfinite=raise the pipeline saves finite weights only); "
        "use another checkpoint of the run"
    )
    # Weights that do not fit the checkpoint's own config (edited in it): a size-mismatch
    # traceback at load, exit 1, its outputs/eval/… folder left (hostile review).
    state = torch.load(ckpt, weights_only=True)
    state[CHECKPOINT_CONFIG_KEY]["model"]["num_classes"] = 10
    torch.save(state, damaged)
    result = run_cli("pipeline.eval", [f"ckpt_path={damaged}"], tmp_path, torch_home)
    assert result.returncode == 2, result.stderr
    assert f"  - ckpt_path={damaged}: its weights do not fit the config saved in it " \
        "(model.num_classes=10, data.channels=3: mis-shaped keys" in result.stderr  # fmt: skip
    assert not (tmp_path / "outputs" / "eval").exists()
    # Training on from NaN in the optimizer's state stopped steps later, blaming optimizer.lr.
    state = torch.load(ckpt, weights_only=True)
    next(iter(state["optimizer_states"][0]["state"].values()))["momentum_buffer"][0] = math.nan
    torch.save(state, damaged)
    result = run_cli("pipeline.train", [*TINY, f"ckpt_path={damaged}", "trainer.max_steps=4"],
                     tmp_path, torch_home)  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"  - ckpt_path={damaged} holds inf or NaN in its optimizer state (momentum_buffer of " \
        "parameter 0): training on would carry it" in result.stderr  # fmt: skip


def test_a_run_that_diverged_under_warn_saved_weights_eval_refuses_saying_so(
    tmp_path: Path, torch_home: Path
) -> None:
    """trainer.detect_nonfinite=warn trains on past a divergence and saves what it has: eval of
    that checkpoint names the cause, not a damaged file."""
    args = [*TINY, "logger=none", "loss=sum_diff", "optimizer.lr=1e30", "trainer.max_steps=4",
            "trainer.detect_nonfinite=warn"]  # fmt: skip
    assert run_cli("pipeline.train", args, tmp_path, torch_home).returncode == 0
    (ckpt,) = (tmp_path / "outputs").glob("*/*/checkpoints/last.ckpt")
    result = run_cli("pipeline.eval", [f"ckpt_path={ckpt}"], tmp_path, torch_home)
    assert result.returncode == 2, result.stderr
    said = "its run diverged and, with trainer.detect_nonfinite=warn, saved the diverged weights"
    assert said in result.stderr

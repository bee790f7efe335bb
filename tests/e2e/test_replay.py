"""Where a divergence began (issue 14, item 3): divergence.json from the non-finite guard, and
`python -m pipeline.replay` naming the first module or operation that went non-finite."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import DIVERGED, TINY, only_run_dir, run_cli

BLOCK = re.compile(r"\b(conv1|bn1|layer[1-4]|fc)\b")


def test_a_diverged_run_writes_divergence_json_and_replay_names_the_first_bad_module(
    tmp_path: Path, torch_home: Path
) -> None:
    # lr 0.1 on the seed's loss: float32 overflows near step 9 (batch 4, 32×32).
    from pipeline.gradients import BLOCKS

    args = [*TINY, "trainer.max_steps=60", "optimizer.lr=0.1", "logger=none"]
    train = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert train.returncode == 3, train.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "divergence.json").read_text())
    step = record["step"]
    assert 0 < step < 59
    # The loss is inf/NaN, or (when a gradient overflowed first) finite but exploded: its
    # last finite value depends on the summation order, so on the thread count (5e29 on one).
    assert isinstance(record["loss"], str) or abs(record["loss"]) > 1e20
    start = (step % 2) * 4  # 8 samples in batches of 4, in index order
    assert record["indices"] == list(range(start, start + 4))
    assert record["grad_norm"]["last_finite"]["step"] == step - 1  # every step is logged
    last_norms = {k: v for k, v in record["grad_norm"]["last_finite"].items() if k != "step"}
    assert set(last_norms) == {*BLOCKS, "total"}
    assert all(isinstance(v, float) for v in last_norms.values())  # finite: no "inf"/"nan" text
    assert record["first_nonfinite_block"] in BLOCKS
    assert (
        f"forward order, whose gradient norm overflowed or is NaN: {record['first_nonfinite_block']}"
        in (train.stderr)
    )
    # The loss that became inf or NaN, or where it stayed finite, the gradients: not both.
    head = DIVERGED.search(train.stderr)
    assert head is not None, train.stderr
    assert head.group(0).startswith("train/loss became") == isinstance(record["loss"], str)
    assert "pipeline.replay" in train.stderr

    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 0, replay.stderr[-2000:]
    lines = replay.stdout.splitlines()
    float32 = next(line for line in lines if line.strip().startswith("float32:"))
    assert BLOCK.search(float32) or "operation" in float32, replay.stdout
    assert "float64" in replay.stdout, replay.stdout
    assert lines[-1].strip().startswith(("float64 overflows too", "float64 stays finite")), lines[
        -1
    ]
    assert replay.stderr == "", replay.stderr


def test_a_healthy_run_writes_no_divergence_json_and_replay_refuses_it(
    tmp_path: Path, torch_home: Path
) -> None:
    train = run_cli("pipeline.train", [*TINY, "logger=none"], tmp_path, torch_home)
    assert train.returncode == 0, train.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    assert f"Run directory: {run_dir}" in train.stdout
    assert "TensorBoard:" not in train.stdout  # logger=none: no event files to open
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "divergence.json").exists()

    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 2
    assert replay.stderr.strip().splitlines() == [
        f"pipeline.replay: {run_dir} has no divergence.json: only a run the non-finite guard "
        "stopped can be replayed"
    ]

    (run_dir / "divergence.json").write_text('{"step": 9,')  # cut short: a traceback, exit 1
    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 2, replay.stderr
    assert replay.stderr.strip().splitlines() == [
        f"pipeline.replay: {run_dir / 'divergence.json'} is not the record the non-finite guard "
        "writes (it cannot be read as JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 12 (char 11)); it cannot be replayed: run the command that diverged again "
        "to write it anew"
    ]

    (run_dir / "divergence.json").write_text("{}")
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 2
    assert len(replay.stderr.strip().splitlines()) == 1 and "last.ckpt" in replay.stderr


def test_the_defaults_divergence_stops_where_batchnorms_statistics_overflow(
    tmp_path: Path, torch_home: Path
) -> None:
    """The seed's loss at the defaults: near step 25 a forward pass carries layer4's running
    variance past float32 while the loss, normalised by the batch's own statistics, is finite.
    The guard stopped five steps later, when the stored statistics were already inf ("an
    optimizer step had already made the weights non-finite", nothing saved, nothing to replay);
    it now stops at that step, saves the state before it, and replay names the statistic."""
    args = ["trainer.max_steps=60", "callbacks.progress_bar=false", "logger=none"]
    train = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert train.returncode == 3, train.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    record = json.loads((run_dir / "divergence.json").read_text())
    statistic = record["first_nonfinite_statistic"]
    assert statistic is not None and statistic.endswith(("running_var", "running_mean"))
    assert isinstance(record["loss"], float)  # still finite
    assert f"BatchNorm's running statistic {statistic} became inf or NaN at step " in train.stderr
    assert "the last finite state is in" in train.stderr
    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 0, replay.stderr[-2000:]
    float32 = next(line for line in replay.stdout.splitlines() if "float32:" in line)
    assert f"forward: {statistic} (BatchNorm2d's running statistic" in float32, replay.stdout
    # detect_nonfinite=warn names it too (it said "train/loss became -3.6e+30"): the step
    # again from the state saved before it (a resume is bitwise the run that would have been)
    step = record["step"]
    saved = run_dir / "checkpoints" / "last.ckpt"
    warn = [*args, f"ckpt_path={saved}", f"trainer.max_steps={step + 1}",
            "trainer.detect_nonfinite=warn"]  # fmt: skip
    (tmp_path / "warn").mkdir()
    warned = run_cli("pipeline.train", warn, tmp_path / "warn", torch_home)
    assert warned.returncode == 0, warned.stderr[-2000:]
    assert f"BatchNorm's running statistic {statistic} became inf or NaN at step {step}" in (
        warned.stdout + warned.stderr
    )

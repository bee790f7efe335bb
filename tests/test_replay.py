"""Where a divergence began (issue 14, item 3): divergence.json from the non-finite guard, and
`python -m pipeline.replay` naming the first module or operation that went non-finite."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from torch import nn

from helpers import TINY, only_run_dir, run_cli

BLOCK = re.compile(r"\b(conv1|bn1|layer[1-4]|fc)\b")


def test_a_planted_overflow_in_layer3_is_named_and_float64_holds() -> None:
    from torchvision.models import resnet18

    from pipeline.replay import first_nonfinite_leaf

    torch.manual_seed(0)
    net = resnet18(num_classes=3).eval()
    with torch.no_grad():
        net.layer3[0].conv1.weight.fill_(
            1e36
        )  # its output sums ~1e3 such terms: > float32's 3.4e38
    images = torch.rand(2, 3, 32, 32)
    clean, _ = first_nonfinite_leaf(resnet18(num_classes=3).eval(), images)
    leaf, output = first_nonfinite_leaf(net, images)
    wide, wide_output = first_nonfinite_leaf(net.double(), images.double())

    assert clean is None
    assert leaf == "layer3.0.conv1 (Conv2d)"
    assert not torch.isfinite(output).all()
    assert wide is None and torch.isfinite(wide_output).all()  # only float32 overflows


def test_anomaly_mode_names_the_backward_operation_that_returned_nan() -> None:
    from pipeline.replay import backward_nonfinite_op

    class SqrtAtZero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(3))

        def forward(self) -> torch.Tensor:
            return (torch.sqrt(self.w) * 0).sum()  # finite forward; d sqrt/dw = inf, × 0 = NaN

    net = SqrtAtZero()
    assert backward_nonfinite_op(net(), net) == "operation SqrtBackward0 returned NaN"
    healthy = nn.Linear(2, 1)
    assert backward_nonfinite_op(healthy(torch.ones(1, 2)).sum(), healthy) is None


def test_the_first_nonfinite_block_is_the_first_in_forward_order() -> None:
    from pipeline.divergence import first_nonfinite_block

    norms = {"conv1": 1.0, "bn1": 2.0, "layer1": 3.0, "layer2": "inf", "layer3": 1.0}
    assert first_nonfinite_block(norms | {"layer4": "nan", "fc": "inf"}) == "layer2"
    assert first_nonfinite_block({b: 1.0 for b in ("conv1", "fc")}) is None


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
        f"forward order, whose gradient norm is inf or NaN: {record['first_nonfinite_block']}"
        in (train.stderr)
    )
    assert "pipeline.replay" in train.stderr

    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 0, replay.stderr[-2000:]
    lines = replay.stdout.splitlines()
    float32 = next(line for line in lines if line.strip().startswith("float32:"))
    assert BLOCK.search(float32) or "operation" in float32, replay.stdout
    assert "float64" in replay.stdout and "overflow" in lines[-1], replay.stdout
    assert replay.stderr == "", replay.stderr


def test_a_healthy_run_writes_no_divergence_json_and_replay_refuses_it(
    tmp_path: Path, torch_home: Path
) -> None:
    train = run_cli("pipeline.train", [*TINY, "logger=none"], tmp_path, torch_home)
    assert train.returncode == 0, train.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "divergence.json").exists()

    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 2
    assert replay.stderr.strip().splitlines() == [
        f"pipeline.replay: {run_dir} has no divergence.json: only a run the non-finite guard "
        "stopped can be replayed"
    ]

    (run_dir / "divergence.json").write_text("{}")
    (run_dir / "checkpoints" / "last.ckpt").unlink()
    replay = run_cli("pipeline.replay", [str(run_dir)], tmp_path, torch_home)
    assert replay.returncode == 2
    assert len(replay.stderr.strip().splitlines()) == 1 and "last.ckpt" in replay.stderr

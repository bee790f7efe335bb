"""Where a divergence began (issue 14, item 3): divergence.json from the non-finite guard, and
`python -m pipeline.replay` naming the first module or operation that went non-finite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.divergence import read_divergence
from pipeline.errors import ConfigError


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
    assert leaf == "the output of layer3.0.conv1 (Conv2d)"
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


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "cannot be read as JSON"),
        ("[1, 2]", "it holds a list, not an object"),
        ('{"step": "9", "micro_batches": [[1]], "checkpoint_global_step": 9}', "its step"),
        (
            '{"step": 9, "micro_batches": [[1]], "checkpoint_global_step": "x"}',
            "checkpoint_global_step",
        ),
        ('{"step": 9, "checkpoint_global_step": 9}', "its micro_batches"),
        (
            '{"step": 9, "micro_batches": [[1, 2.5]], "checkpoint_global_step": 9}',
            "its micro_batches",
        ),
        (
            '{"step": 9, "micro_batches": [[5, 100000000000000000000]], "checkpoint_global_step": 9}',
            "an index outside 0",
        ),
        ('{"step": 9, "micro_batches": [[5]], "checkpoint_global_step": 9}', "no loss"),
    ],
)
def test_a_divergence_json_that_is_not_the_guards_is_one_line(
    tmp_path: Path, text: str, why: str
) -> None:
    (tmp_path / "divergence.json").write_text(text)
    with pytest.raises(ConfigError) as raised:
        read_divergence(tmp_path)
    (line,) = raised.value.problems
    assert why in line and "not the record the non-finite guard writes" in line


def test_the_guards_record_reads_back(tmp_path: Path) -> None:
    record = {"step": 9, "loss": "nan", "indices": [3, 1, 2], "micro_batches": [[3, 1], [2]],
              "checkpoint_global_step": None}  # fmt: skip
    (tmp_path / "divergence.json").write_text(json.dumps(record))
    assert read_divergence(tmp_path) == record


def test_a_path_that_is_no_run_directory_says_so(tmp_path: Path) -> None:
    from pipeline.replay import load_step

    (plain := tmp_path / "notes.txt").write_text("x")
    for path, what in ((tmp_path / "nowhere", "no such folder"), (plain, "a file")):
        with pytest.raises(ConfigError) as info:
            load_step(path)
        assert info.value.problems == [
            f"{path} is not a run directory ({what}); give the folder of the run that stopped"
        ]


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_usage_and_what_replay_does(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--help` was taken for a run directory: "--help is not a run directory (no such folder)"."""
    from pipeline.replay import main

    with pytest.raises(SystemExit) as info:
        main([flag])
    assert info.value.code == 0
    out = capsys.readouterr()
    assert out.out.startswith("usage: python -m pipeline.replay <run dir>\n")
    assert "Exit codes:" in out.out and out.err == ""
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and capsys.readouterr().err.startswith("usage:")


def test_a_step_is_replayed_at_the_runs_own_precision_first() -> None:
    """bf16-mixed was replayed at float32 and float64 only: a NaN of bfloat16 arithmetic could
    not show. Now the run's precision first (mixed: autocast around the forward), then float32
    where that is another, then float64."""
    from pipeline.replay import replayed_precisions

    def plan(precision: str, accelerator: str = "gpu") -> list[tuple[str, object, object]]:
        return [(p.name, p.dtype, p.autocast) for p in replayed_precisions(precision, accelerator)]

    f32, f64 = ("float32", torch.float32, None), ("float64", torch.float64, None)
    assert plan("32-true") == [f32, f64]
    assert plan("64-true") == [f64]
    assert plan("bf16-mixed") == [("bf16-mixed", torch.float32, torch.bfloat16), f32, f64]
    assert plan("16-mixed") == [("16-mixed", torch.float32, torch.float16), f32, f64]
    assert plan("16-mixed", "cpu")[0] == ("16-mixed", torch.float32, torch.bfloat16)  # Lightning's
    assert plan("bf16-true") == [("bf16-true", torch.bfloat16, None), f32, f64]
    assert plan("16-true") == [("16-true", torch.float16, None), f32, f64]


def test_the_replay_at_mixed_precision_runs_the_forward_under_autocast() -> None:
    from torchvision.models import resnet18

    from pipeline.replay import replayed_precisions

    bf16 = replayed_precisions("bf16-mixed", "cpu")[0]
    with bf16.forward_context():
        out = resnet18(num_classes=3)(torch.rand(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16

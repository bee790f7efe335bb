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

    def plan(precision: str, on_gpu: bool = True) -> list[tuple[str, object, object]]:
        return [(p.name, p.dtype, p.autocast) for p in replayed_precisions(precision, on_gpu)]

    f32, f64 = ("float32", torch.float32, None), ("float64", torch.float64, None)
    assert plan("32-true") == [f32, f64]
    assert plan("64-true") == [f64]
    assert plan("bf16-mixed") == [("bf16-mixed", torch.float32, torch.bfloat16), f32, f64]
    assert plan("16-mixed") == [("16-mixed", torch.float32, torch.float16), f32, f64]
    assert plan("16-mixed", on_gpu=False)[0] == ("16-mixed", torch.float32, torch.bfloat16)
    assert plan("bf16-true") == [("bf16-true", torch.bfloat16, None), f32, f64]
    assert plan("16-true") == [("16-true", torch.float16, None), f32, f64]


def test_the_replay_at_mixed_precision_runs_the_forward_under_autocast() -> None:
    from torchvision.models import resnet18

    from pipeline.replay import replayed_precisions

    bf16 = replayed_precisions("bf16-mixed", on_gpu=False)[0]
    with bf16.forward_context():
        out = resnet18(num_classes=3)(torch.rand(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16


def test_the_verdict_covers_every_precision_replayed() -> None:
    """A finding at float32 alone was reported as "did not reproduce" (with exit 0)."""
    from pipeline.replay import Finding, verdict

    bad = Finding("forward", "the output of conv1 (Conv2d)")
    none = None
    assert verdict({"bf16-mixed": none, "float32": bad, "float64": none}) == (
        "float64 stays finite at this step: only float32 went non-finite"
    )
    assert verdict({"float32": bad, "float64": none}, unbounded_loss=True) == (
        "float64 stays finite at this step: only float32 went non-finite; float64's range only "
        "postpones the seed's unbounded loss"
    )
    assert verdict({"bf16-mixed": bad, "float32": bad, "float64": none}).endswith(
        "only bf16-mixed and float32 went non-finite"
    )
    assert verdict({"float32": bad, "float64": bad}).startswith("float64 overflows too:")
    assert verdict({"float64": bad}).startswith("float64 overflows: a true divergence")  # 64-true
    assert verdict({"float32": none, "float64": none}).startswith("did not reproduce")
    # The seed's loss is named only for a run of it, and not at step 0 (no update yet).
    assert verdict({"float64": bad}) == "float64 overflows: a true divergence"
    assert verdict({"float64": bad}, unbounded_loss=True).endswith(", as the seed's unbounded loss")
    assert verdict({"float32": bad, "float64": none}, True, first_step=True) == (
        "float64 stays finite at this step: only float32 went non-finite"
    )
    assert verdict({"float32": bad, "float64": bad}, True, first_step=True) == (
        "float64 overflows too at the first step, before any update: the initial weights make "
        "it (model.weights)"
    )


def test_a_run_on_auto_was_on_a_gpu_only_where_its_run_json_saw_one(tmp_path: Path) -> None:
    """16-mixed on a CPU runs as bf16 (Lightning: "AMP with fp16 is not supported on CPU"); with
    device=auto the config alone cannot tell, the run's provenance can."""
    from omegaconf import OmegaConf

    from pipeline.replay import ran_on_gpu

    auto = OmegaConf.create({"device": {"accelerator": "auto"}})
    assert not ran_on_gpu(tmp_path, auto)  # no run.json: as on this CPU
    (tmp_path / "run.json").write_text(json.dumps({"gpus": {"count": 2, "names": ["H200"] * 2}}))
    assert ran_on_gpu(tmp_path, auto)
    (tmp_path / "run.json").write_text(json.dumps({"gpus": {"count": 0, "names": []}}))
    assert not ran_on_gpu(tmp_path, auto)
    assert ran_on_gpu(tmp_path, OmegaConf.create({"device": {"accelerator": "gpu"}}))
    assert not ran_on_gpu(tmp_path, OmegaConf.create({"device": {"accelerator": "cpu"}}))


def test_a_64_true_checkpoint_is_replayed_at_float64() -> None:
    """Its weights went into a float32 module: 1.2e43 became inf, and replay reported a
    divergence at float64 that the run never had."""
    from omegaconf import OmegaConf

    from pipeline import build
    from pipeline.cli import compose
    from pipeline.replay import loaded

    cfg = compose("train", ["model.num_classes=3"])
    module = build.build_module(cfg)
    state = {k: v.double() for k, v in module.state_dict().items() if v.is_floating_point()}
    state = module.state_dict() | state
    state["net.conv1.weight"][0, 0, 0, 0] = 1.2e43  # finite in float64, inf in float32
    replayed = loaded(build.build_module(OmegaConf.create(cfg)), state)
    assert replayed.net.conv1.weight.dtype == torch.float64
    assert replayed.net.conv1.weight[0, 0, 0, 0].item() == 1.2e43
    float32 = build.build_module(cfg)
    float32.load_state_dict(module.state_dict())
    assert loaded(float32, module.state_dict()).net.conv1.weight.dtype == torch.float32

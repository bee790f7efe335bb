"""The speed knobs change speed, not results: model.compile, the CUDA flags, the DDP options."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from pipeline import model
from pipeline.callbacks.cuda_flags import (
    TORCH_DEFAULTS,
    current_flags,
    flags_for,
    scoped_flags,
)
from pipeline.cli import compose
from pipeline.config import validate, warnings_for
from pipeline.gradients import TOLERANCES, tolerance_for
from pipeline.model import resnet_features
from pipeline.settings import settings_of


def test_features_then_head_is_torchvisions_forward() -> None:
    net = resnet18(num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net.fc(resnet_features(net, x)), net(x))


def test_the_per_step_attributes_skip_nn_modules_lookup_and_the_rest_still_register() -> None:
    """Lightning sets the module's hook name around each of its ~45 hook calls a step; the
    module's per-step attributes are stored plainly, whatever else is assigned registers as
    nn.Module registers it."""
    import lightning.pytorch as pl
    from torch import nn

    assert "_current_fx_name" in vars(pl.LightningModule())  # Lightning still names it so
    module = model.ResNetClassifier(
        net=nn.Linear(1, 1), loss_fn=torch.nn.functional.mse_loss,
        optimizer_factory=torch.optim.SGD, scheduler_kwargs={}, channels_last=False,
    )  # fmt: skip
    loss = torch.tensor(1.5)
    for name, value in [("_current_fx_name", "training_step"), ("_step_loss", loss),
                        ("_step_lr", 0.1), ("logged_loss", loss)]:  # fmt: skip
        setattr(module, name, value)
        assert vars(module)[name] is value and name in model.PLAIN_STEP_ATTRIBUTES
    module.head = nn.Linear(1, 2)
    module.register_buffer("count", torch.zeros(()))
    module.count = torch.ones(())
    assert "head" in module._modules and "head" not in vars(module)
    assert torch.equal(module._buffers["count"], torch.ones(()))
    names = {n for n, _ in module.named_parameters()}
    assert names == {"net.weight", "net.bias", "head.weight", "head.bias"}


def test_lightnings_per_batch_read_of_training_steps_signature_is_made_once() -> None:
    """Lightning reads training_step's signature on every batch (does it take batch_idx?): it is
    made once, and still says so."""
    import inspect

    from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
    from torch import nn

    module = model.ResNetClassifier(
        net=nn.Linear(1, 1), loss_fn=torch.nn.functional.mse_loss,
        optimizer_factory=torch.optim.SGD, scheduler_kwargs={}, channels_last=False,
    )  # fmt: skip
    assert inspect.signature(module.training_step.__func__) is inspect.signature(
        model.ResNetClassifier.training_step
    )
    assert is_param_in_hook_signature(module.training_step, "batch_idx", min_args=2)


def test_cuda_flags_map_the_config_and_are_scoped_to_the_run() -> None:
    assert flags_for(cudnn_benchmark=True, tf32=True) == (True, True, True)
    assert flags_for(cudnn_benchmark=False, tf32=False) == (False, False, False)
    assert flags_for(cudnn_benchmark=False, tf32=None) == TORCH_DEFAULTS == (False, False, True)
    before = current_flags()
    with scoped_flags((True, True, False)):
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32
    assert current_flags() == before  # the next run starts from what was there


def test_tf32_loosens_the_gradient_check_to_its_rounding() -> None:
    assert tolerance_for("32-true", tf32=False) == TOLERANCES["32-true"] == 1e-4
    assert tolerance_for("32-true", tf32=True) == 2e-2
    assert tolerance_for("bf16-true", tf32=True) == TOLERANCES["bf16-true"]


def test_auto_settings_resolve_by_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: channels_last (if asked) on for CUDA only; no DataLoader workers (the default) on
    either, since the loader carries sample indices only."""
    from pipeline import build
    from pipeline.cli import compose

    cfg = compose("train", ["device=cpu", "model.channels_last=auto"])
    assert cfg.data.num_workers == "auto"
    assert (build.channels_last(cfg), build.num_workers(cfg)) == (False, 0)
    monkeypatch.setattr(build, "uses_cuda", lambda cfg: True)
    assert (build.channels_last(cfg), build.num_workers(cfg)) == (True, 0)
    explicit = compose("train", ["model.channels_last=false", "data.num_workers=2"])
    assert (build.channels_last(explicit), build.num_workers(explicit)) == (False, 2)


@pytest.mark.parametrize(("setting", "mode"), [(True, None), ("reduce-overhead", "reduce-overhead"),
                                               ("max-autotune", "max-autotune")])  # fmt: skip
def test_model_compile_names_torch_compiles_mode(
    setting: model.CompileMode, mode: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What reaches torch.compile (compiling itself: tests/e2e/test_speed_knobs.py)."""
    asked: list[str | None] = []

    def compile_(fn: object, *, mode: str | None = None) -> object:
        asked.append(mode)
        return fn

    monkeypatch.setattr(model.torch, "compile", compile_)
    net = resnet18(num_classes=3).eval()
    forward = model.compiled_forward(net, setting)
    images = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(forward(images), net(images))
    assert asked == [mode]


def test_model_compile_takes_torch_compiles_modes_and_says_what_a_cpu_does_with_them() -> None:
    cfg = compose("train", ["model.compile=reduce-overhead", "device=cpu"])
    assert validate(cfg) == [] and settings_of(cfg).model.compile == "reduce-overhead"
    assert warnings_for(cfg) == [
        "model.compile=reduce-overhead on a CPU: CUDA graphs are CUDA's, so it compiles as "
        "model.compile=true does"
    ]
    assert warnings_for(compose("train", ["model.compile=max-autotune", "device=cpu"])) == []
    (problem,) = validate(compose("train", ["model.compile=fast"]))
    assert problem.startswith("model.compile must be true, false, reduce-overhead, max-autotune, "
                              "max-autotune-no-cudagraphs (got 'fast')")  # fmt: skip

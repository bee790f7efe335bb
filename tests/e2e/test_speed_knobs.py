"""The speed knobs change speed, not results: model.compile, the CUDA flags, the DDP options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from helpers import TINY, run_cli, scalars
from pipeline.callbacks.throughput import FIRST_STEP_TOOK


def test_compiled_run_matches_eager_and_keeps_torchvisions_keys(
    tmp_path: Path, torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real torch.compile (inductor) run: the live gradient check passes on every step, the
    losses match an eager run's, and the checkpoint loads into a plain ResNet18."""
    inductor_cache = tmp_path / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(inductor_cache))
    # No validation: its inference-mode forward is a graph of its own, ~10 s more to compile.
    args = [*TINY, "loss=mse", "callbacks.gradient_check.every_n_steps=1",
            "trainer.limit_val_batches=0"]  # fmt: skip
    losses = {}
    for compile_ in (False, True):
        run = tmp_path / f"compile-{compile_}"
        result = run_cli(
            "pipeline.train",
            [*args, f"model.compile={str(compile_).lower()}", f"hydra.run.dir={run}"],
            tmp_path,
            torch_home,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        assert "No CUDA runtime" not in result.stderr
        tags = scalars(run / "tensorboard")
        assert [v for _, v in tags["gradcheck/passed"]] == [1.0, 1.0]
        losses[compile_] = [v for _, v in tags["train/loss"]]
        assert FIRST_STEP_TOOK.split("%")[0] in (run / "train.log").read_text()
    assert any(inductor_cache.rglob("*.py"))  # inductor generated kernels
    # The same forward; after a step, BatchNorm over 4 values per channel amplifies rounding.
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-5)
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    net = resnet18(num_classes=1000)
    net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})  # strict

"""The live analytic gradient check passes on CUDA under the mixed precisions (GradScaler's
unscaled gradients under 16-mixed, bf16 autocast), on every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from helpers import TINY, only_run_dir, run_cli, scalars

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_the_analytic_check_passes_under_mixed_precision_on_cuda(
    precision: str, tmp_path: Path, torch_home: Path
) -> None:
    args = [*TINY, "device=gpu", f"precision={precision}", "loss=mse", "trainer.max_steps=4",
            "callbacks.gradient_check.every_n_steps=1", "callbacks.gradient_check.on_fail=raise"]  # fmt: skip
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    passed = scalars(only_run_dir(tmp_path) / "tensorboard")["gradcheck/passed"]
    assert [value for _, value in passed] == [1.0] * 4


def test_trainer_deterministic_on_cuda_trains_bitwise_the_same_twice(
    tmp_path: Path, torch_home: Path
) -> None:
    """torch.use_deterministic_algorithms refuses AdaptiveAvgPool2d's CUDA backward and histc on
    CUDA: trainer.deterministic=true stopped at the first backward. It pools by a mean and bins
    histograms by bincount there; two runs save the same weights, bit for bit."""
    states = []
    for name in ("first", "second"):
        args = [*TINY, "device=gpu", "trainer.deterministic=true", "loss=cross_entropy",
                "model.num_classes=10", "trainer.max_steps=4",
                "callbacks.gradients.histogram_every_n_steps=2", f"hydra.run.dir={tmp_path / name}"]  # fmt: skip
        result = run_cli("pipeline.train", args, tmp_path, torch_home)
        assert result.returncode == 0, result.stderr[-3000:]
        ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)
        states.append(ckpt["state_dict"])
        events = EventAccumulator(str(tmp_path / name / "tensorboard"))
        events.Reload()
        assert "grad/conv1.weight" in events.Tags()["histograms"]  # binned at steps 0 and 2
    assert states[0].keys() == states[1].keys()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key

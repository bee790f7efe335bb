"""The live analytic gradient check passes on CUDA under the mixed precisions (GradScaler's
unscaled gradients under 16-mixed, bf16 autocast), on every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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

"""The gradient noise scale against linear regression, where it is known in closed form.

x ~ N(0, I_d), y = x·w* + σ·ε, loss (x·w − y)² averaged over the batch, weights held at w
(lr 0). With δ = w − w*, the per-sample gradient 2(x·δ − σε)x has mean G = 2δ and, by
Isserlis, E[g gᵀ] = 4(‖δ‖² I + 2δδᵀ + σ² I), so tr(Σ) = 4((d + 1)‖δ‖² + dσ²) and
B_simple = tr(Σ)/‖G‖² = d + 1 + dσ²/‖δ‖².
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

import pipeline.callbacks.noise_scale as noise_scale_module
from helpers import TINY, Recorder, cli_env, only_run_dir, run_cli, scalars
from pipeline.callbacks.noise_scale import GradientNoiseScale
from pipeline.gradients import BLOCKS

DIM, SIGMA, BATCH = 256, 1.0, 512  # B_simple = 513: the batch near it, where both terms count
TRUE_B_SIMPLE = DIM + 1 + DIM * SIGMA**2  # ‖δ‖ = 1


class LinearRegression(pl.LightningModule):
    def __init__(self, delta: Tensor) -> None:
        super().__init__()
        self.net = nn.ModuleDict({"fc": nn.Linear(DIM, 1, bias=False)})  # a block named as ResNet's
        with torch.no_grad():
            self.net["fc"].weight.copy_(delta.view(1, -1))  # w* = 0, so w = δ

    def forward(self, x: Tensor) -> Tensor:
        return self.net["fc"](x).squeeze(1)  # (B,)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return ((self(x) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def batches(steps: int, size: int, seed: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """The same samples in batches of `size`, whatever `size` (a stream of BATCH-sized draws)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(BATCH, DIM, generator=g, dtype=torch.float64)
        y = SIGMA * torch.randn(BATCH, generator=g, dtype=torch.float64)  # y = x·w* + σε, w* = 0
        yield from zip(x.split(size), y.split(size), strict=True)


def fit(
    steps: int,
    accumulate: int,
    ema_decay: float,
    processes: int = 1,
    epoch_steps: int | None = None,
    ckpt_path: Path | None = None,
) -> Recorder:
    """A real Trainer run, BATCH samples an optimizer step: in one batch (the halves), in
    `accumulate` micro-batches, or split over `processes` DDP processes on gloo (rank r takes
    the r-th part of each step's samples, as DDP's sampler would). Epochs of `epoch_steps`
    (all by default); resumed from `ckpt_path` if given, saved to it otherwise."""
    delta = torch.randn(DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    recorder = Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", precision="64-true", max_steps=steps, devices=processes,
        strategy="ddp" if processes > 1 else "auto", use_distributed_sampler=False,
        accumulate_grad_batches=accumulate, log_every_n_steps=1, logger=recorder,
        callbacks=[GradientNoiseScale(ema_decay=ema_decay)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    rank = int(os.environ.get("LOCAL_RANK", "0"))
    epoch = epoch_steps or steps
    parts = list(batches(epoch, BATCH // (accumulate * processes)))[rank::processes]
    data = DataLoader(parts, batch_size=None)
    resume = ckpt_path if ckpt_path is not None and ckpt_path.is_file() else None
    trainer.fit(LinearRegression(delta / delta.norm()), data, ckpt_path=resume)
    if ckpt_path is not None and resume is None:
        trainer.save_checkpoint(ckpt_path)
    return recorder


def logged_b_simple(
    steps: int, accumulate: int, ema_decay: float
) -> list[tuple[int | None, float]]:
    """grad_noise/b_simple of one process's run (see fit), checked to stand beside batch BATCH."""
    recorder = fit(steps, accumulate, ema_decay)
    assert {v for _, v in recorder.tag("grad_noise/batch_size")} == {BATCH}
    return recorder.tag("grad_noise/b_simple")


def test_halves_estimate_lands_within_10_percent_of_the_closed_form() -> None:
    values = logged_b_simple(steps=300, accumulate=1, ema_decay=0.99)
    assert [s for s, _ in values] == list(range(300))
    assert values[-1][1] == pytest.approx(TRUE_B_SIMPLE, rel=0.10)


def test_a_biased_estimator_misses_the_closed_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """‖G_B‖² taken for ‖G‖² (its bias, tr(Σ)/B, is as large as ‖G‖² near B_simple): the
    test above would fail."""

    def biased(
        small_sq: Tensor, big_sq: Tensor, b_small: float, b_big: float
    ) -> tuple[Tensor, Tensor]:
        return big_sq, (small_sq - big_sq) / (1 / b_small - 1 / b_big)

    monkeypatch.setattr(noise_scale_module, "noise_scale_terms", biased)
    values = logged_b_simple(steps=300, accumulate=1, ema_decay=0.99)
    assert values[-1][1] != pytest.approx(TRUE_B_SIMPLE, rel=0.10)


def test_accumulation_of_two_agrees_with_the_halves_on_the_same_samples() -> None:
    """The first micro-batch of 2 is the first half of the batch, so both estimates are equal."""
    halves = logged_b_simple(steps=20, accumulate=1, ema_decay=0.9)
    accumulated = logged_b_simple(steps=20, accumulate=2, ema_decay=0.9)
    assert [s for s, _ in accumulated] == list(range(20))
    assert [v for _, v in accumulated] == pytest.approx([v for _, v in halves], rel=1e-9)


def test_a_resumed_run_continues_the_same_average(tmp_path: Path) -> None:
    """6 steps straight (epochs of 5), or 5 then resumed from the checkpoint: the resumed run's
    first estimate is the straight run's moving average at that step, not a fresh start's (which
    would be the estimate of step 0: the same samples)."""
    straight = fit(steps=6, accumulate=1, ema_decay=0.9, epoch_steps=5).tag("grad_noise/b_simple")
    ckpt = tmp_path / "five.ckpt"
    fit(steps=5, accumulate=1, ema_decay=0.9, ckpt_path=ckpt)
    # Saved after fit, the checkpoint re-enters its epoch at batch 5, the first batch again
    # (of 5): only the first resumed step sees the straight run's samples.
    resumed = fit(steps=6, accumulate=1, ema_decay=0.9, epoch_steps=5, ckpt_path=ckpt)
    assert resumed.tag("grad_noise/b_simple") == [(5, pytest.approx(straight[5][1], rel=1e-9))]
    assert straight[5][1] != pytest.approx(straight[0][1], rel=1e-3)


def test_cli_logs_the_noise_scale_under_accumulation(tmp_path: Path, torch_home: Path) -> None:
    """The real CLI, 2 micro-batches of 4 a step: B_simple every logged step, beside batch 8."""
    args = [*TINY, "loss=mse", "trainer.accumulate_grad_batches=2", "data.num_samples=16"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    # The start-up line counts the micro-batches of a step: it said "global batch 4".
    started = " ".join(result.stdout.split())
    assert (
        "global batch 8 (1 process(es) × data.batch_size=4 × trainer.accumulate_grad_batches=2)"
        in started
    ), started
    tags = scalars(only_run_dir(tmp_path) / "tensorboard")
    assert tags["grad_noise/batch_size"] == [(0, 8.0), (1, 8.0)]
    for tag in ("grad_noise/b_simple", *(f"grad_noise/b_simple/{b}" for b in BLOCKS)):
        assert [s for s, _ in tags[tag]] == [0, 1], tag
        assert all(math.isfinite(v) for _, v in tags[tag]), tag


def test_two_ddp_processes_agree_with_the_halves_on_the_same_samples(
    tmp_path: Path, torch_home: Path
) -> None:
    """2 gloo processes, each half of every step's samples: rank 0's own gradient against the
    all-reduced one is the first half against the batch, so the estimates are equal."""
    out = tmp_path / "ddp.json"
    tests = str(Path(__file__).parents[1])  # helpers, and this file as e2e.test_noise_scale
    env = cli_env(torch_home) | {"PYTHONPATH": tests}
    # `python -m e2e.test_noise_scale OUT`: rank 0 forked warm, rank 1 started by Lightning
    result = run_cli("e2e.test_noise_scale", [str(out)], tmp_path, torch_home, 300, env=env)
    assert result.returncode == 0, result.stderr
    ddp = json.loads(out.read_text())
    assert {v for _, v in ddp["grad_noise/batch_size"]} == {BATCH}
    halves = logged_b_simple(steps=20, accumulate=1, ema_decay=0.9)
    assert [s for s, _ in ddp["grad_noise/b_simple"]] == list(range(20))
    assert [v for _, v in ddp["grad_noise/b_simple"]] == pytest.approx(
        [v for _, v in halves], rel=1e-9
    )


if __name__ == "__main__":  # the DDP test's processes: python -m e2e.test_noise_scale OUT.json
    recorder = fit(steps=20, accumulate=1, ema_decay=0.9, processes=2)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        tags = ("grad_noise/b_simple", "grad_noise/batch_size")
        Path(sys.argv[1]).write_text(json.dumps({t: recorder.tag(t) for t in tags}))


def test_cli_noise_scale_off_writes_no_grad_noise(tmp_path: Path, torch_home: Path) -> None:
    args = [*TINY, "callbacks.gradients.noise_scale=off"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    tags = scalars(only_run_dir(tmp_path) / "tensorboard")
    assert "grad_norm/total" in tags
    assert not [t for t in tags if t.startswith("grad_noise/")]

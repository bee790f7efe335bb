"""The gradient logger inside a real Trainer: which steps it measures and what it writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from helpers import TINY, Recorder, only_run_dir, run_cli, scalars
from pipeline.callbacks import GradientLogger
from pipeline.gradients import BLOCKS, block_of


class TwoBlocks(pl.LightningModule):
    """y ≈ fc(conv1(x)), mean squared error, plain SGD: blocks named as ResNet18's."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.ModuleDict({"conv1": nn.Linear(3, 4), "fc": nn.Linear(4, 1)})
        self.lr = lr

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        return ((self.net["fc"](self.net["conv1"](x)) - y) ** 2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class StepProbe(pl.Callback):
    """Before each optimizer step (and before clipping): the weights and gradients, by block."""

    def __init__(self, blocks: tuple[str, ...] = ("conv1", "fc")) -> None:
        self.blocks = blocks
        self.seen: list[dict[str, tuple[Tensor, Tensor]]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        by_block: dict[str, tuple[Tensor, Tensor]] = {}
        for block in self.blocks:
            params = list(pl_module.net[block].parameters())
            weights = torch.cat([p.detach().flatten() for p in params]).clone()
            grads = torch.cat([p.grad.flatten() for p in params]).clone()  # type: ignore[union-attr]
            by_block[block] = (weights, grads)
        self.seen.append(by_block)


def test_update_ratio_is_the_clipped_step_under_accumulation() -> None:
    """SGD with gradient clipping, 2 batches accumulated a step: the logged ratio is
    lr·clip(g)/‖w‖ with clip(g) = g·min(1, c/(‖g‖ + 1e-6)) (torch's clip_grad_norm_), not lr·‖g‖/‖w‖."""
    lr, clip = 0.1, 1e-2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True) + 1), batch_size=2)
    probe, recorder = StepProbe(), Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", precision="64-true", max_steps=2, accumulate_grad_batches=2,
        gradient_clip_val=clip, log_every_n_steps=1, logger=recorder,
        callbacks=[probe, GradientLogger(histogram_every_n_steps=0)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TwoBlocks(lr), data)
    assert [s for s, _ in recorder.tag("update_ratio/total")] == [0, 1]  # one per optimizer step
    for step, by_block in enumerate(probe.seen):
        total_grad = torch.cat([gr for _, gr in by_block.values()]).norm()
        scale = min(1.0, clip / (float(total_grad) + 1e-6))
        assert scale < 0.5  # clipping is on
        # what clipping did, a tag of its own (review: the norms are before it, and nothing said)
        assert dict(recorder.tag("grad/clip_scale"))[step] == pytest.approx(scale, rel=1e-6)
        for block, (weights, grads) in by_block.items():
            logged = dict(recorder.tag(f"update_ratio/{block}"))[step]
            expected = lr * scale * float(grads.norm()) / float(weights.norm())
            assert logged == pytest.approx(expected, rel=1e-5), (step, block)
            assert dict(recorder.tag(f"grad_norm/{block}"))[step] == pytest.approx(
                float(grads.norm()), rel=1e-5
            )  # the gradients before clipping


def test_cli_update_ratio_is_adamws_real_step_not_lr_grad_over_weight(
    tmp_path: Path, torch_home: Path
) -> None:
    """Two real runs from the same initial weights. Plain SGD's first step gives each block's ‖w‖
    (its ratio is lr·‖g‖/‖w‖ exactly); AdamW's first step moves every weight by
    lr·(g/(|g| + ε) + decay·w), ≈ lr·√n a block, thousands of times lr·‖g‖/‖w‖ under mse."""
    lr = 1e-3
    runs = {}
    for name, options in {"sgd": ["optimizer.momentum=0"], "adamw": []}.items():
        cwd = tmp_path / name
        cwd.mkdir()
        args = [*TINY, "loss=mse", f"optimizer={name}", f"optimizer.lr={lr}", *options]
        result = run_cli("pipeline.train", args, cwd, torch_home)
        assert result.returncode == 0, result.stderr
        runs[name] = scalars(only_run_dir(cwd) / "tensorboard")
    sgd, adamw = runs["sgd"], runs["adamw"]
    for block in (*BLOCKS, "total"):
        assert [s for s, _ in adamw[f"update_ratio/{block}"]] == [0, 1], block
    numel = dict.fromkeys(BLOCKS, 0)
    for param_name, p in resnet18().named_parameters():
        numel[block_of(param_name)] += p.numel()
    for block in BLOCKS:
        grad_norm = sgd[f"grad_norm/{block}"][0][1]
        assert adamw[f"grad_norm/{block}"][0][1] == pytest.approx(grad_norm, rel=1e-4)  # same start
        weight_norm = lr * grad_norm / sgd[f"update_ratio/{block}"][0][1]
        ratio = adamw[f"update_ratio/{block}"][0][1]
        assert ratio > 3 * lr * grad_norm / weight_norm, block
        # At 32×32 layer4 sees 1×1 maps: its 3×3 kernels' outer taps get no gradient, so no step.
        if block != "layer4":
            expected = lr * math.sqrt(numel[block]) / weight_norm
            assert ratio == pytest.approx(expected, rel=0.05), block


class FreezeConv1(pl.Callback):
    """From the batch of step `at` on, conv1 has no gradients (frozen mid-fit)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        if trainer.global_step == self.at:
            pl_module.net["conv1"].requires_grad_(False)


def test_a_layer_frozen_mid_fit_drops_out_and_the_others_ratios_stay_right() -> None:
    """The weights' copy before each logged step is reused without a check while the same
    parameters have gradients; once conv1 is frozen it is made again for fc's alone (a reused
    one of conv1's and fc's tensors would be copied into wrongly, or fail)."""
    lr = 0.1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    data = DataLoader(TensorDataset(x, x.sum(1, keepdim=True) + 1), batch_size=2)
    probe, recorder = StepProbe(blocks=("fc",)), Recorder()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=4, log_every_n_steps=1, logger=recorder,
        callbacks=[FreezeConv1(at=2), probe, GradientLogger(histogram_every_n_steps=0)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    module = TwoBlocks(lr)
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=lr)  # type: ignore[method-assign]
    trainer.fit(module, data)
    assert [s for s, _ in recorder.tag("update_ratio/fc")] == [0, 1, 2, 3]
    assert [s for s, _ in recorder.tag("update_ratio/conv1")] == [0, 1, 2, 3]
    assert recorder.tag("grad/clip_scale") == []  # no clipping, no tag
    for step in range(4):
        weights, grads = probe.seen[step]["fc"]
        expected = lr * float(grads.norm()) / float(weights.norm())  # plain SGD
        assert dict(recorder.tag("update_ratio/fc"))[step] == pytest.approx(expected, rel=1e-5)
        conv1 = dict(recorder.tag("update_ratio/conv1"))[step]
        assert conv1 > 0 if step < 2 else conv1 == 0.0  # frozen: no gradient, no step


def test_a_gradient_past_float32s_sum_of_squares_is_logged_as_it_is() -> None:
    """fc's gradient ~1e21, finite in float32 while its sum of squares is not: grad_norm/fc read
    inf, grad/nonfinite_count 1 and the step's histograms were skipped (review, under bf16-true's
    exploding layer4). The norm is the float64 one now, and nothing is counted as non-finite."""
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    data = DataLoader(TensorDataset(x, torch.zeros(8, 1)), batch_size=8)
    module = TwoBlocks(lr=1e-30)
    with torch.no_grad():
        module.net["conv1"].weight.fill_(3e10)  # h ~1e11: the loss ~1e23 is finite
    probe, recorder = StepProbe(), Recorder()
    logger = GradientLogger(histogram_every_n_steps=1)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, log_every_n_steps=1, logger=recorder,
        callbacks=[probe, logger], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(module, data)
    _, grads = probe.seen[0]["fc"]
    assert torch.isinf((grads.float() ** 2).sum())  # float32's sum of squares overflows
    logged = dict(recorder.tag("grad_norm/fc"))[0]
    assert math.isfinite(logged) and logged == pytest.approx(float(grads.double().norm()), rel=1e-6)
    assert dict(recorder.tag("grad/nonfinite_count"))[0] == 0
    assert logger.skipped_histograms == 0

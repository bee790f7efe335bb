"""The model summary's FLOPs (pipeline.callbacks.model_summary): one image's forward pass, counted on
the meta device, equal to torch's count of a real forward; Lightning's own said 0."""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import ModelSummary, RichModelSummary
from torch.utils.flop_counter import FlopCounterMode

from helpers import TINY
from pipeline import build
from pipeline.callbacks.model_summary import RichSummaryWithFlops, SummaryWithFlops
from pipeline.cli import compose
from pipeline.resources import forward_flops


def test_forward_flops_on_meta_are_a_real_forwards_and_resnet18s_published_figure() -> None:
    module = build.build_module(compose("train", [*TINY, "data.channels=1"]))
    with FlopCounterMode(display=False) as counter:
        module.net(torch.rand(2, 1, 32, 32))  # on the CPU, real values
    counted = forward_flops(num_classes=1000, batch_size=2, channels=1, image_size=32)
    assert counted == counter.get_total_flops() > 0
    # ResNet18 at 224×224: 1.82 G multiply-adds an image (torchvision's figure), 2 FLOPs each
    at_224 = forward_flops(num_classes=1000, batch_size=1, channels=3, image_size=224)
    assert 3.6e9 < at_224 < 3.7e9


def test_the_runs_summary_shows_one_images_flops_and_follows_the_bar_and_the_switch(
    tmp_path: Path,
) -> None:
    cfg = compose("train", [*TINY, "callbacks.progress_bar=true"])
    (summary,) = [c for c in build.build_callbacks(cfg, tmp_path) if isinstance(c, ModelSummary)]
    assert isinstance(summary, RichSummaryWithFlops)
    table = summary._summary(None, build.build_module(cfg))  # type: ignore[arg-type]
    one_image = forward_flops(num_classes=1000, batch_size=1, channels=3, image_size=32)
    assert table.total_flops == one_image and table.flop_counts["net"] == {"forward": one_image}

    plain = build.build_callbacks(
        compose("train", [*TINY, "callbacks.progress_bar=false"]), tmp_path
    )
    assert [type(c) for c in plain if isinstance(c, ModelSummary)] == [SummaryWithFlops]
    off = compose("train", [*TINY, "+trainer.enable_model_summary=false"])
    assert not [c for c in build.build_callbacks(off, tmp_path) if isinstance(c, RichModelSummary)]
    assert not [c for c in build.build_callbacks(off, tmp_path) if isinstance(c, ModelSummary)]


def test_a_run_of_other_channels_trains(tmp_path: Path) -> None:
    """data.channels=1: the model's stem, the pre-training gradcheck and the summary take 1 channel."""
    import lightning.pytorch as pl

    cfg = compose("train", [*TINY, "data.channels=1", "logger=none"])
    trainer = build.build_trainer(cfg, tmp_path)
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    assert trainer.global_step == 2 and isinstance(trainer, pl.Trainer)


def test_throughput_logs_the_models_training_tflops_at_its_rate(tmp_path: Path) -> None:
    """perf/model_tflops_per_sec: 3 forward passes an image (forward and backward) at the logged
    images/s, from the same FLOPs as the summary."""
    from helpers import Recorder
    from pipeline.callbacks.throughput import model_tflops

    cfg = compose("train", [*TINY, "logger=none"])
    trainer = build.build_trainer(cfg, tmp_path)
    recorder = Recorder()
    trainer.loggers = [recorder]
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    rates, tflops = recorder.tag("perf/images_per_sec"), recorder.tag("perf/model_tflops_per_sec")
    assert [s for s, _ in tflops] == [s for s, _ in rates] == [0, 1]  # TINY: every step
    one_image = forward_flops(num_classes=1000, batch_size=1, channels=3, image_size=32)
    for (_, rate), (_, logged) in zip(rates, tflops, strict=True):
        assert logged == model_tflops(one_image, rate) == 3 * one_image * rate / 1e12 > 0

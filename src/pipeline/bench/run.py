"""The interleaved benchmark: every variant, round by round, in one process.

Each round runs every variant once, `bench.warmup_steps + bench.steps` steps from the same
init; the order of the variants turns every round, so none always runs first or after the same
neighbour. Then the start-up (bench.startup) and the data path, and the figures as a dict.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline import build
from pipeline.bench.clock import Timing
from pipeline.bench.data_path import time_data
from pipeline.bench.loops import time_naive, time_plain_pytorch, time_trainer
from pipeline.bench.memory import memory_mb
from pipeline.bench.startup import time_startup
from pipeline.bench.stats import Rounds, data_share, summarize
from pipeline.bench.variants import (
    bare_config,
    chosen_features,
    feature_variants,
    instrument_frequencies,
    knob_configs,
    merged,
)
from pipeline.callbacks.throughput import model_tflops
from pipeline.settings import settings_of

Variant = Callable[[Path], Timing]  # one round in a fresh work directory


def round_order(names: list[str], round_index: int) -> list[str]:
    """The variants' order in a round: each round starts one further along, and every other round
    runs the rest backwards, so no variant always runs first or right after the same neighbour."""
    k = round_index % len(names)
    turned = names[k:] + names[:k]
    return turned[:1] + turned[:0:-1] if round_index % 2 else turned


def round_config(cfg: DictConfig) -> DictConfig:
    """The run's config for one round: enough samples for `warmup_steps + steps` uninterrupted
    (no epoch boundary, and no validation, inside it) and one untimed step after them (a run's
    last step writes histograms, once a run: not a cost of every step), no model summary."""
    total = cfg.bench.warmup_steps + cfg.bench.steps + 1
    out = merged(cfg, {"data": {"num_samples": cfg.data.batch_size * total},
                       "trainer": {"max_steps": total}})  # fmt: skip
    OmegaConf.set_struct(out, False)
    out.trainer.enable_model_summary = False
    return out


def variants_of(
    train_cfg: DictConfig, device: torch.device
) -> tuple[dict[str, Variant], list[str]]:
    """plain, pipeline and naive; with bench.features, bare and bare plus each instrument asked for; the
    pipeline with each knob. Also the knobs skipped on this device."""
    b = train_cfg.bench

    def trainer(variant_cfg: DictConfig) -> Variant:
        return lambda workdir: time_trainer(variant_cfg, b.warmup_steps, b.steps, workdir)

    variants: dict[str, Variant] = {
        "plain": lambda _: time_plain_pytorch(train_cfg, device, b.warmup_steps, b.steps),
        "pipeline": trainer(train_cfg),
        "naive": lambda _: time_naive(train_cfg, device, b.warmup_steps, b.steps),
    }
    features = feature_variants(train_cfg)
    if chosen := chosen_features(train_cfg):
        bare = bare_config(train_cfg)
        variants["bare"] = trainer(bare)
        for key in chosen:
            name, change = features[key]
            variants[name] = trainer(merged(bare, change))
    knobs, skipped = knob_configs(train_cfg, device)
    variants |= {name: trainer(knob_cfg) for name, knob_cfg in knobs.items()}
    return variants, skipped


def run_rounds(
    variants: dict[str, Variant], rounds: int, device: torch.device
) -> dict[str, Rounds]:
    """Every variant once a round, in `round_order`; each one's timing and peak memory."""
    figures = {name: Rounds() for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for name in round_order(list(variants), r):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run_dir = Path(tmp) / f"{r}-{abs(hash(name))}"
                timing = variants[name](run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoint: ~90 MB a round
                gc.collect()  # the run's Trainer and model: not collected inside the next timing
                figures[name].add(
                    timing.steps, timing.waits, timing.first_step_s, timing.mean_step_s
                )
                for callback, seconds in timing.hook_s.items():
                    figures[name].hook_s.setdefault(callback, []).append(seconds)
                figures[name].peak_mb = max(figures[name].peak_mb, memory_mb(device))
    return figures


def run_benchmark(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Every variant, interleaved over bench.rounds; then the start-up and the data path. The
    figures as a dict (`stats.summarize`, with `knobs_skipped` and `data`)."""
    train_cfg = round_config(cfg)
    device = build.run_device(train_cfg)
    if device.type == "cuda":  # the allocator's peak counters exist once CUDA is initialized
        device = torch.device("cuda", 0)  # where a single-device run trains
        torch.empty(1, device=device)
    variants, skipped = variants_of(train_cfg, device)
    rounds = run_rounds(variants, cfg.bench.rounds, device)
    startup = None
    if cfg.bench.startup:
        with tempfile.TemporaryDirectory() as tmp:
            startup = time_startup(overrides, Path(tmp) / "startup")
    batch = cfg.data.batch_size
    figures = summarize(rounds, batch, instrument_frequencies(train_cfg), startup, device)
    figures["knobs_skipped"] = skipped
    flops = build.image_flops(settings_of(train_cfg))  # one image's forward, as the summary's
    figures["model_tflops_per_sec"] = {
        name: model_tflops(flops, ips) for name, ips in figures["images_per_sec"].items()
    }
    data = time_data(build.build_datamodule(train_cfg), device, cfg.bench.rounds)
    step_s = statistics.median(rounds["pipeline"].step_s)
    figures["data"] = data | {"share_of_step": data_share(data["make_us_per_image"], batch, step_s)}
    return figures

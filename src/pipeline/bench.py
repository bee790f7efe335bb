"""`python -m pipeline.bench`: the pipeline's Trainer against the notebook's plain PyTorch loop.

In one process, after warm-up, interleaved round by round: (a) `plain`, the seed's loop
(zero_grad, forward, loss, backward, step) with the run's model settings and DataLoader;
(b) `pipeline`, the Trainer with the run's callbacks and logger; (c) `naive`, the notebook as
written (torch.rand batches, NCHW, 32-true); with bench.features, `bare` (no instruments,
no logger, no progress bar) plus bare with one instrument at a time; and, for each of
bench.knobs, the pipeline with that one setting changed. Each round times bench.steps steps per
variant after bench.warmup_steps; a round's figure is its mean step time (so instruments that
fire every N steps are counted), with the device synchronized only at the two ends of the timed
window (the host may run ahead of a GPU, as in training), and the report is the median over
rounds. The order of the
variants turns every round, so none always runs first or after the same neighbour. The first
step of the first round is reported apart (torch.compile compiles in it). Then the data path
alone: µs to make an image of the run's batch on its device, against the numpy path it replaced,
and that time's share of a pipeline step (bench.data_only=true: only this). Writes a table, and
bench.output as JSON.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import hydra
import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torchvision.models import ResNet

from pipeline import build, cli, report
from pipeline.callbacks.cuda_flags import TORCH_DEFAULTS, flags_for, scoped_flags
from pipeline.callbacks.throughput import FIRST_STEP_MESSAGE
from pipeline.config import CONFIG_DIR, validate
from pipeline.data import SyntheticDataModule
from pipeline.errors import DIVERGED_EXIT_CODE, DivergenceError
from pipeline.losses import LOSSES
from pipeline.model import compiled_forward

_ABSENT = object()
# Skipped on a CPU: the flags do nothing there, and optimizer.fused is off there by default.
CUDA_ONLY_KNOBS = ("device.cudnn_benchmark", "device.tf32", "optimizer.fused")
BARE = {  # and no logger: bare_config
    "callbacks": {
        "progress_bar": False,
        "gradients": {"enabled": False},
        "gradient_check": {"enabled": False},
    },
}


def merged(*configs: Any) -> DictConfig:
    """OmegaConf.merge of mappings, typed as the DictConfig it is."""
    out = OmegaConf.merge(*configs)
    assert isinstance(out, DictConfig)
    return out


def bare_config(cfg: DictConfig) -> DictConfig:
    """cfg without instruments, progress bar or logger (the logger group replaced, not merged)."""
    out = merged(cfg, BARE)
    out.logger = {}
    OmegaConf.set_struct(out.logger, False)  # open: a variant adds a logger to it
    return out


def feature_variants(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Bare plus one instrument, at its configured frequency and at every step."""
    grads, check = cfg.callbacks.gradients, cfg.callbacks.gradient_check
    every = cfg.trainer.log_every_n_steps
    norms = {"enabled": True, "histogram_every_n_steps": 0, "noise_scale": "off"}
    return {
        f"+norms and update ratios (every {every})": {"callbacks": {"gradients": norms}},
        "+norms and update ratios (every step)": {
            "callbacks": {"gradients": norms},
            "trainer": {"log_every_n_steps": 1},
        },
        f"+norms, noise scale=on (every {every})": {
            "callbacks": {"gradients": {**norms, "noise_scale": "on"}}
        },
        "+histograms (every step)": {
            "callbacks": {"gradients": {"enabled": True, "histogram_every_n_steps": 1}},
            "trainer": {"log_every_n_steps": 10**9},
            "logger": {"tensorboard": {"log_graph": False}},
        },
        "+analytic check (every step)": {
            "callbacks": {"gradient_check": {"enabled": True, "every_n_steps": 1}}
        },
        "+progress bar": {"callbacks": {"progress_bar": True}},
        f"+tensorboard writes (every {every})": {"logger": {"tensorboard": {"log_graph": False}}},
        "_frequencies": {"histograms": grads.histogram_every_n_steps, "check": check.every_n_steps},
    }


@dataclass
class Rounds:
    """Per-round figures of one variant."""

    step_s: list[float] = field(default_factory=list)  # mean step time of each round
    wait_share: list[float] = field(default_factory=list)  # time waiting for data / step time
    peak_mb: float = 0.0
    first_step_s: float | None = None  # the first round's first step: compiling, caches warming

    def add(
        self,
        steps: list[float],
        waits: list[float],
        first_step_s: float | None = None,
        mean_step_s: float | None = None,
    ) -> None:
        """One round: its mean step time is `mean_step_s` (the synchronized window) when given,
        else the mean of `steps`."""
        self.step_s.append(mean_step_s if mean_step_s is not None else statistics.fmean(steps))
        if waits:
            self.wait_share.append(sum(waits) / sum(steps))
        if self.first_step_s is None:
            self.first_step_s = first_step_s

    def images_per_sec(self, batch: int) -> float:
        return batch / statistics.median(self.step_s)

    def spread(self) -> float:
        """Half the range of the per-round figures, relative to their median: the ± of a round."""
        return (max(self.step_s) - min(self.step_s)) / 2 / statistics.median(self.step_s)


@dataclass
class Timing:
    """What one variant's round measured."""

    steps: list[float]  # each timed step, end to end
    waits: list[float] = field(default_factory=list)  # of each timed step, the wait for its batch
    first_step_s: float | None = None  # batch start to end of the run's first step
    mean_step_s: float | None = None  # the timed window, synchronized at its ends, per step


def round_order(names: list[str], round_index: int) -> list[str]:
    """The variants' order in a round: each round starts one further along, and every other round
    runs the rest backwards, so no variant always runs first or right after the same neighbour."""
    k = round_index % len(names)
    turned = names[k:] + names[:k]
    return turned[:1] + turned[:0:-1] if round_index % 2 else turned


def parse_knob(knob: str) -> tuple[str, Any]:
    """'model.channels_last=true' → ('model.channels_last', True): read as Hydra reads a
    command-line override (so trainer.detect_nonfinite=off is the string 'off', as in training)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    key, sep, _ = knob.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"bench.knobs entry {knob!r} is not KEY=VALUE, e.g. model.channels_last=true"
        )
    try:
        override = OverridesParser.create().parse_override(knob.strip())
    except Exception as exc:  # Hydra's grammar error names the position
        raise ValueError(f"bench.knobs entry {knob!r}: {exc}") from None
    return override.key_or_group, override.value()


def with_knob(cfg: DictConfig, knob: str) -> DictConfig:
    """The config with one bench.knobs entry applied."""
    key, value = parse_knob(knob)
    out = merged(cfg)  # a deep copy
    OmegaConf.update(out, key, value, force_add=True)
    return out


def relative_cost(variant_step_s: float, base_step_s: float) -> float:
    """Extra step time of a variant over its base, as a fraction of the base's."""
    return variant_step_s / base_step_s - 1.0


def amortized(every_step_cost: float, every_n_steps: int) -> float:
    """The cost of an instrument that fires every N steps, from its cost when it fires every step."""
    return every_step_cost / every_n_steps if every_n_steps > 0 else 0.0


def first_step_seconds(log_text: str) -> float | None:
    """The process-start-to-first-step time a run logged (Throughput callback), if any."""
    pattern = re.escape(FIRST_STEP_MESSAGE).replace("%\\.2f", r"([\d.]+)")
    found = re.search(pattern, log_text)
    return float(found.group(1)) if found else None


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/statm") as f:  # resident pages now; sampled at each round's end
        return int(f.read().split()[1]) * 4096 / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synced_points(warmup: int, total: int) -> tuple[int, int]:
    """The steps at whose end the device is synchronized: the one before the first timed step,
    and the last. Steps max(warmup, 1)…total−1 are timed, each from the end of the one before;
    between the two points the host may run ahead of the device, as in real training, so a
    round's mean step time is (end − start) / timed steps, not a sum of synced steps (a sync on
    every step would charge all host work, which a GPU otherwise hides, to the step)."""
    return max(warmup, 1) - 1, total - 1


class StepClock:
    """Step times, each from the end of the step before, after `warmup` steps; the device is
    synchronized only at the ends of the timed window (`synced_points`). The first step is
    timed apart, from `begin` (where compiling happens)."""

    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.device = warmup, device
        self.sync_at = synced_points(warmup, total)
        self.steps: list[float] = []
        self.first_step_s: float | None = None
        self.mean_step_s: float | None = None
        self.end: float | None = None  # the last step's end
        self.begin = time.perf_counter()  # the first step's start
        self._window_start = 0.0
        self._seen = 0

    def step_end(self) -> bool:
        """Mark a step's end; whether that step was timed."""
        i = self._seen
        if i in self.sync_at:
            _sync(self.device)
        now = time.perf_counter()
        timed = self.end is not None and i >= self.warmup
        if self.end is None:
            self.first_step_s = now - self.begin
        elif timed:
            self.steps.append(now - self.end)
        if i == self.sync_at[0]:
            self._window_start = now
        elif i == self.sync_at[1] and self.steps:
            self.mean_step_s = (now - self._window_start) / len(self.steps)
        self.end, self._seen = now, i + 1
        return timed


class StepTimer(pl.Callback):
    """A StepClock over the Trainer's batches (batch end to batch end), and the data waits of
    the timed steps (batch end to next batch start)."""

    def __init__(self, warmup_steps: int, total_steps: int, device: torch.device) -> None:
        self.clock = StepClock(warmup_steps, total_steps, device)
        self.waits: list[float] = []
        self._start = 0.0

    @property
    def steps(self) -> list[float]:
        return self.clock.steps

    @property
    def first_step_s(self) -> float | None:
        return self.clock.first_step_s

    @property
    def mean_step_s(self) -> float | None:
        return self.clock.mean_step_s

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()
        if self.clock.end is None:
            self.clock.begin = self._start

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        previous_end = self.clock.end
        if self.clock.step_end():
            assert previous_end is not None  # a timed step follows another
            self.waits.append(self._start - previous_end)


def numpy_reference_images(
    indices: range, *, seed: int, image_size: int, channels: int
) -> torch.Tensor:
    """The data path make_batch replaced, kept here only to measure against: one numpy PCG64
    stream per training sample, seeded by SeedSequence([seed, split, index]), float32 draws,
    one sample at a time (as the DataLoader called it), stacked as its collate did."""
    shape = (channels, image_size, image_size)
    images = [
        torch.from_numpy(
            np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0, i]))).random(
                shape, dtype=np.float32
            )
        )
        for i in indices
    ]
    return torch.stack(images)  # (B, C, H, W)


def time_data(datamodule: SyntheticDataModule, device: torch.device, rounds: int) -> dict[str, Any]:
    """µs per image of the run's batch: make_batch on the run's device (synchronized) and the
    numpy path on this process's CPU, interleaved over `rounds`, medians."""
    batch = datamodule.batch_size
    indices = torch.arange(batch)
    make_s, numpy_s = [], []
    datamodule.samples(indices, "train", device)  # warm-up: CUDA context, kernel caches
    for _ in range(rounds):
        _sync(device)
        start = time.perf_counter()
        datamodule.samples(indices, "train", device)
        _sync(device)
        make_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        numpy_reference_images(range(batch), seed=datamodule.seed,
                               image_size=datamodule.image_size, channels=datamodule.channels)  # fmt: skip
        numpy_s.append(time.perf_counter() - start)
    make_us, numpy_us = (statistics.median(t) / batch * 1e6 for t in (make_s, numpy_s))
    return {
        "image_size": datamodule.image_size,
        "batch_size": batch,
        "device": str(device),
        "make_us_per_image": make_us,
        "numpy_us_per_image": numpy_us,
        "make_over_numpy_speedup": numpy_us / make_us,
    }


def time_trainer(cfg: DictConfig, warmup: int, steps: int, workdir: Path) -> Timing:
    """One round of the pipeline's Trainer: fresh model (from the same init), `warmup + steps` steps."""
    pl.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer(warmup, warmup + steps, build.run_device(cfg))
    trainer = build.build_trainer(cfg, workdir, extra_callbacks=[timer])
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    return Timing(timer.steps, timer.waits, timer.first_step_s, timer.mean_step_s)


def _autocast(cfg: DictConfig, device: torch.device) -> torch.autocast:
    dtype = {
        "bf16-mixed": torch.bfloat16,
        "16-mixed": torch.float16 if device.type == "cuda" else torch.bfloat16,
    }
    return torch.autocast(
        device.type, dtype=dtype.get(cfg.precision, torch.float32), enabled=cfg.precision in dtype
    )


def time_plain(
    cfg: DictConfig, device: torch.device, warmup: int, steps: int, naive: bool
) -> Timing:
    """The seed's loop by hand. naive: the notebook as written (torch.rand batches, NCHW, fp32,
    not compiled). Otherwise the run's memory format, precision and compile, as the module has."""
    pl.seed_everything(cfg.seed, verbose=False)
    module = build.build_module(cfg)
    net = module.net.to(device)
    nhwc = not naive and build.channels_last(cfg)  # resolved once, not in the timed loop
    if nhwc:
        net = net.to(memory_format=torch.channels_last)
    if not naive and cfg.precision == "64-true":
        net = net.double()
    forward: Callable[[torch.Tensor], torch.Tensor] = net
    if not naive and cfg.model.compile:
        forward = compiled_forward(cast(ResNet, net))  # the module's compiled path
    # The naive loop builds torch's default optimizer, as the notebook does (not fused).
    factory = (
        build.optimizer_factory(merged(cfg, {"optimizer": {"fused": None}}))
        if naive
        else module.optimizer_factory
    )
    optimizer = factory(net.parameters())
    loss_fn = LOSSES[cfg.loss.name].fn
    datamodule = build.build_datamodule(cfg)
    batches = iter(datamodule.train_dataloader())
    b, s = cfg.data.batch_size, cfg.data.image_size
    # The CUDA flags the run would set (the naive loop: torch's defaults), for this loop only.
    flags = TORCH_DEFAULTS if naive else flags_for(**build.cuda_flag_settings(cfg))
    with scoped_flags(flags) if device.type == "cuda" else nullcontext():
        clock = StepClock(warmup, warmup + steps, device)  # timed as StepTimer times the Trainer
        for _ in range(warmup + steps):
            if naive:
                data, labels = (
                    torch.rand(b, 3, s, s, device=device),
                    torch.rand(b, cfg.model.num_classes, device=device),
                )
            else:
                indices = next(batches).indices.to(device, non_blocking=True)
                data, labels = datamodule.samples(indices, "train", device)
                if nhwc:
                    data = data.contiguous(memory_format=torch.channels_last)
                if cfg.precision == "64-true":
                    data = data.double()
            optimizer.zero_grad()
            with (
                _autocast(cfg, device) if not naive else torch.autocast(device.type, enabled=False)
            ):
                prediction = forward(data)
            loss = (prediction - labels).sum() if naive else loss_fn(prediction, labels)
            loss.backward()
            optimizer.step()
            clock.step_end()
    return Timing(clock.steps, first_step_s=clock.first_step_s, mean_step_s=clock.mean_step_s)


class MemorySampler(pl.Callback):
    """Resident memory (MB) after the first step and every `every` steps: (step, MB) pairs."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.samples: list[tuple[int, float]] = []

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == 1 or step % self.every == 0:
            self.samples.append((step, peak_memory_mb(torch.device("cpu"))))


def run_soak(cfg: DictConfig, workdir: Path) -> dict[str, Any]:
    """One long run with the run's callbacks and logger; resident memory along the way."""
    sampler = MemorySampler(cfg.bench.soak_every)
    soak_cfg = merged(cfg, {"trainer": {"max_steps": cfg.bench.soak_steps}})
    pl.seed_everything(cfg.seed, verbose=False)
    trainer = build.build_trainer(soak_cfg, workdir, extra_callbacks=[sampler])
    started = time.perf_counter()
    trainer.fit(build.build_module(soak_cfg), datamodule=build.build_datamodule(soak_cfg))
    after_warmup = next(
        (mb for step, mb in sampler.samples if step >= cfg.bench.soak_every), sampler.samples[0][1]
    )
    return {
        "steps": trainer.global_step,
        "seconds": time.perf_counter() - started,
        "resident_mb": sampler.samples,
        "growth_after_first_sample_mb": sampler.samples[-1][1] - after_warmup,
    }


def time_startup(overrides: list[str], workdir: Path) -> float | None:
    """A real `python -m pipeline.train` with one step: seconds from process start to first step."""
    overrides = [o for o in overrides if not o.startswith("bench.")]
    args = [
        *overrides,
        "trainer.max_steps=1",
        "logger=none",
        "callbacks.progress_bar=false",
        f"hydra.run.dir={workdir}",
    ]
    subprocess.run(
        [sys.executable, "-m", "pipeline.train", *args],
        capture_output=True,
        timeout=600,
        check=True,
    )
    return first_step_seconds((workdir / "train.log").read_text())


def knob_configs(cfg: DictConfig, device: torch.device) -> tuple[dict[str, DictConfig], list[str]]:
    """The pipeline with each of bench.knobs applied alone; CUDA-only knobs are skipped on the CPU."""
    variants, skipped = {}, []
    for knob in cfg.bench.knobs:
        key, _ = parse_knob(knob)
        if key in CUDA_ONLY_KNOBS and device.type != "cuda":
            skipped.append(f"{knob} (CUDA only)")
            continue
        variants[f"pipeline {knob}"] = with_knob(cfg, knob)
    return variants, skipped


def run_benchmark(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Every variant, interleaved over bench.rounds; the figures as a dict."""
    b = cfg.bench
    # Enough samples for one uninterrupted round: no epoch boundary (and validation) inside it.
    train_cfg = merged(cfg, {"data": {"num_samples": cfg.data.batch_size * (b.warmup_steps + b.steps)},
                                      "trainer": {"max_steps": b.warmup_steps + b.steps}})  # fmt: skip
    OmegaConf.set_struct(train_cfg, False)
    train_cfg.trainer.enable_model_summary = False
    with tempfile.TemporaryDirectory() as probe:
        device = build.build_trainer(bare_config(train_cfg), Path(probe)).strategy.root_device
    if device.type == "cuda":  # the allocator's peak counters exist once CUDA is initialized
        device = torch.device("cuda", device.index or 0)
        torch.empty(1, device=device)

    def trainer_variant(variant_cfg: DictConfig) -> Callable[[Path], Timing]:
        return lambda d: time_trainer(variant_cfg, b.warmup_steps, b.steps, d)

    variants: dict[str, Callable[[Path], Timing]] = {
        "plain": lambda _: time_plain(train_cfg, device, b.warmup_steps, b.steps, naive=False),
        "pipeline": trainer_variant(train_cfg),
        "naive": lambda _: time_plain(train_cfg, device, b.warmup_steps, b.steps, naive=True),
    }
    features = feature_variants(train_cfg)
    frequencies = features.pop("_frequencies")
    if b.features:
        bare = bare_config(train_cfg)
        variants["bare"] = trainer_variant(bare)
        for name, change in features.items():
            variants[name] = trainer_variant(merged(bare, change))
    knobs, skipped = knob_configs(train_cfg, device)
    variants |= {name: trainer_variant(knob_cfg) for name, knob_cfg in knobs.items()}
    rounds = {name: Rounds() for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(b.rounds):
            for name in round_order(list(variants), r):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run_dir = Path(tmp) / f"{r}-{abs(hash(name))}"
                timing = variants[name](run_dir)
                shutil.rmtree(run_dir, ignore_errors=True)  # its checkpoint: ~90 MB a round
                gc.collect()  # the run's Trainer and model: not collected inside the next timing
                rounds[name].add(
                    timing.steps, timing.waits, timing.first_step_s, timing.mean_step_s
                )
                rounds[name].peak_mb = max(rounds[name].peak_mb, peak_memory_mb(device))
        startup = time_startup(overrides, Path(tmp) / "startup") if b.startup else None
    figures = summarize(rounds, cfg.data.batch_size, frequencies, startup, device)
    figures["knobs_skipped"] = skipped
    data = time_data(build.build_datamodule(train_cfg), device, b.rounds)
    step_s = statistics.median(rounds["pipeline"].step_s)
    figures["data"] = data | {"share_of_step": data_share(data["make_us_per_image"], cfg.data.batch_size, step_s)}  # fmt: skip
    return figures


def data_share(make_us_per_image: float, batch: int, step_s: float) -> float:
    """The share of a step spent making its batch: on a GPU the making is queued with the step's
    other kernels, so the wait for data (a host figure) does not show it."""
    return make_us_per_image * 1e-6 * batch / step_s


def summarize(
    rounds: dict[str, Rounds],
    batch: int,
    frequencies: dict[str, int],
    startup: float | None,
    device: torch.device,
) -> dict[str, Any]:
    """Images/s, ratios and costs from the per-round figures (medians over rounds)."""
    med = {name: statistics.median(r.step_s) for name, r in rounds.items()}
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "batch_size": batch,
        "rounds": len(rounds["plain"].step_s),
        "images_per_sec": {name: r.images_per_sec(batch) for name, r in rounds.items()},
        "pipeline_over_plain": med["plain"] / med["pipeline"],
        "pipeline_over_naive": med["naive"] / med["pipeline"],
        "data_wait_share": statistics.median(rounds["pipeline"].wait_share),
        "peak_memory_mb": {name: r.peak_mb for name, r in rounds.items()},
        "startup_to_first_step_s": startup,
        "first_step_s": {name: r.first_step_s for name, r in rounds.items()},
        "round_spread": {name: r.spread() for name, r in rounds.items()},
        "per_round_step_s": {name: r.step_s for name, r in rounds.items()},
    }
    knobs = [name for name in med if name.startswith("pipeline ")]
    out["knob_effects"] = {name: relative_cost(med[name], med["pipeline"]) for name in knobs}
    if "bare" in med:
        costs = {
            name: relative_cost(med[name], med["bare"]) for name in med if name.startswith("+")
        }
        out["instrument_costs"] = costs
        out["pipeline_over_bare_cost"] = relative_cost(med["pipeline"], med["bare"])
        out["amortized_default_costs"] = {
            "histograms": amortized(costs["+histograms (every step)"], frequencies["histograms"]),
            "analytic check": amortized(
                costs["+analytic check (every step)"], frequencies["check"]
            ),
        }
    return out


def show(figures: dict[str, Any]) -> None:
    table = Table(title=f"pipeline.bench on {figures['device']}, batch {figures['batch_size']}, "
                        f"medians of {figures['rounds']} rounds")  # fmt: skip
    table.add_column("variant")
    table.add_column("images/s", justify="right")
    table.add_column("± a round", justify="right")
    table.add_column("cost", justify="right")
    table.add_column("first step", justify="right")
    table.add_column("peak memory", justify="right")
    costs = {
        **{n: f"{c:+.1%} vs bare" for n, c in figures.get("instrument_costs", {}).items()},
        **{n: f"{c:+.1%} vs pipeline" for n, c in figures["knob_effects"].items()},
    }
    for name, ips in figures["images_per_sec"].items():
        first = figures["first_step_s"][name]
        table.add_row(name, f"{ips:.1f}", f"{figures['round_spread'][name]:.1%}", costs.get(name, ""),
                      "" if first is None else f"{first:.2f} s",
                      f"{figures['peak_memory_mb'][name] / 1024:.2f} GB")  # fmt: skip
    report.console.print(table)
    report.console.print(
        f"pipeline / plain = {figures['pipeline_over_plain']:.3f}   pipeline / naive = {figures['pipeline_over_naive']:.3f}   "
        f"data wait = {figures['data_wait_share']:.2%} of step time"
    )
    show_data(figures["data"])
    if "pipeline_over_bare_cost" in figures:
        report.console.print(
            f"default instruments together (pipeline over bare): {figures['pipeline_over_bare_cost']:+.1%}"
        )
    for knob in figures.get("knobs_skipped", []):
        report.console.print(f"knob skipped: {knob}")
    if figures["startup_to_first_step_s"] is not None:
        report.console.print(
            f"command to first training step: {figures['startup_to_first_step_s']:.2f} s"
        )


def show_data(data: dict[str, Any]) -> None:
    share = (
        f"; making a batch is {data['share_of_step']:.2%} of a pipeline step"
        if "share_of_step" in data
        else ""
    )
    report.console.print(
        f"data: {data['make_us_per_image']:.1f} µs an image ({data['image_size']}×{data['image_size']}, batch "
        f"{data['batch_size']}, {data['device']}) against {data['numpy_us_per_image']:.1f} µs on the old numpy "
        f"path: {data['make_over_numpy_speedup']:.2f}× faster{share}"
    )


def validate_bench(cfg: DictConfig) -> list[str]:
    problems = validate(cfg)
    for key in ("rounds", "steps"):
        if not isinstance(cfg.bench[key], int) or cfg.bench[key] < 1:
            problems.append(
                f"bench.{key} must be an integer ≥ 1 (got {cfg.bench[key]!r}); set bench.{key}=5"
            )
    if not isinstance(cfg.bench.warmup_steps, int) or cfg.bench.warmup_steps < 1:
        problems.append(
            f"bench.warmup_steps must be an integer ≥ 1 (got {cfg.bench.warmup_steps!r}); set bench.warmup_steps=3"
        )
    knobs = cfg.bench.knobs
    if not OmegaConf.is_list(knobs) or not all(isinstance(k, str) for k in knobs):
        problems.append(
            f"bench.knobs must be a list of KEY=VALUE strings (got {knobs!r}); "
            "set 'bench.knobs=[\"model.channels_last=true\"]'"
        )
    else:
        for knob in knobs:
            try:
                key, _ = parse_knob(knob)
            except ValueError as exc:
                problems.append(str(exc))
                continue
            if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                problems.append(f"bench.knobs entry {knob!r}: the config has no key {key}")
                continue
            problems += [f"bench.knobs entry {knob!r}: {p}"
                         for p in validate(with_knob(cfg, knob))
                         if p not in problems]  # fmt: skip
    if cfg.device.strategy == "ddp":
        problems.append(
            f"device={cfg.device.name}: the bench runs one process; set device=cpu or device=gpu"
        )
    return problems


@hydra.main(config_path=str(CONFIG_DIR), config_name="bench", version_base="1.3")
def bench(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    report.route_lightning_logs_to_hydra()
    if cfg.bench.soak_steps > 0:
        figures = run_soak(cfg, Path(HydraConfig.get().runtime.output_dir))
        for step, mb in figures["resident_mb"]:
            report.console.print(f"step {step:>7}: {mb:8.1f} MB resident")
        report.console.print(
            f"growth from step {cfg.bench.soak_every} to the end: {figures['growth_after_first_sample_mb']:+.1f} MB"
        )
    elif cfg.bench.data_only:
        figures = time_data(build.build_datamodule(cfg), build.run_device(cfg), cfg.bench.rounds)
        show_data(figures)
    else:
        try:
            figures = run_benchmark(cfg, list(HydraConfig.get().overrides.task))
        except DivergenceError as exc:
            report.show_error(
                "pipeline.bench",
                f"a timed run diverged, so its steps are not the same work ({exc}); "
                "bench with loss=mse, or a smaller data.batch_size",
            )
            sys.exit(DIVERGED_EXIT_CODE)
        show(figures)
    if cfg.bench.output:
        Path(cfg.bench.output).write_text(json.dumps(figures, indent=2) + "\n")
        report.console.print(f"figures written to {cfg.bench.output}")


def main() -> None:
    """Console entry point `pipeline-bench`."""
    cli.run(bench, "bench", "pipeline.bench", validate_bench)


if __name__ == "__main__":
    main()

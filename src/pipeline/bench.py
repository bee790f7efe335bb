"""`python -m pipeline.bench`: the pipeline's Trainer against the notebook's plain PyTorch loop.

In one process, after warm-up, interleaved round by round: (a) `plain`, the seed's loop
(zero_grad, forward, loss, backward, step) with the run's model settings and DataLoader;
(b) `pipeline`, the Trainer with the run's callbacks and logger; (c) `naive`, the notebook as
written (torch.rand batches, NCHW, 32-true); and, with bench.features, `bare` (no instruments,
no logger, no progress bar) plus bare with one instrument at a time. Each round times
bench.steps steps per variant after bench.warmup_steps; a round's figure is its mean step
time (so instruments that fire every N steps are counted), and the report is the median over
rounds. Writes a table, and bench.output as JSON.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from pipeline import build, cli, report
from pipeline.callbacks.throughput import FIRST_STEP_MESSAGE
from pipeline.config import CONFIG_DIR, validate
from pipeline.losses import LOSSES

BARE = {
    "logger": {"name": "none"},
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


def feature_variants(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Bare plus one instrument, at its configured frequency and at every step."""
    grads, check = cfg.callbacks.gradients, cfg.callbacks.gradient_check
    every = cfg.trainer.log_every_n_steps
    return {
        f"+norms (every {every})": {
            "callbacks": {"gradients": {"enabled": True, "histogram_every_n_steps": 0}}
        },
        "+norms (every step)": {
            "callbacks": {"gradients": {"enabled": True, "histogram_every_n_steps": 0}},
            "trainer": {"log_every_n_steps": 1},
        },
        "+histograms (every step)": {
            "callbacks": {"gradients": {"enabled": True, "histogram_every_n_steps": 1}},
            "trainer": {"log_every_n_steps": 10**9},
            "logger": {"name": "tensorboard", "log_graph": False},
        },
        "+analytic check (every step)": {
            "callbacks": {"gradient_check": {"enabled": True, "every_n_steps": 1}}
        },
        "+progress bar": {"callbacks": {"progress_bar": True}},
        f"+tensorboard writes (every {every})": {
            "logger": {"name": "tensorboard", "log_graph": False}
        },
        "_frequencies": {"histograms": grads.histogram_every_n_steps, "check": check.every_n_steps},
    }


@dataclass
class Rounds:
    """Per-round figures of one variant."""

    step_s: list[float] = field(default_factory=list)  # mean step time of each round
    wait_share: list[float] = field(default_factory=list)  # time waiting for data / step time
    peak_mb: float = 0.0

    def add(self, steps: list[float], waits: list[float]) -> None:
        self.step_s.append(statistics.fmean(steps))
        if waits:
            self.wait_share.append(sum(waits) / sum(steps))

    def images_per_sec(self, batch: int) -> float:
        return batch / statistics.median(self.step_s)


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


class StepTimer(pl.Callback):
    """Step times (batch end to batch end) and data waits (batch end to next batch start)."""

    def __init__(self, warmup_steps: int, device: torch.device) -> None:
        self.warmup_steps, self.device = warmup_steps, device
        self.steps: list[float] = []
        self.waits: list[float] = []
        self._end: float | None = None
        self._seen = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        _sync(self.device)
        now = time.perf_counter()
        if self._end is not None and self._seen >= self.warmup_steps:
            self.steps.append(now - self._end)
            self.waits.append(self._start - self._end)
        self._end, self._seen = now, self._seen + 1


def time_trainer(
    cfg: DictConfig, warmup: int, steps: int, workdir: Path
) -> tuple[list[float], list[float]]:
    """One round of the pipeline's Trainer: fresh model (from the same init), `warmup + steps` steps."""
    pl.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer(warmup, build.run_device(cfg))
    trainer = build.build_trainer(cfg, workdir, extra_callbacks=[timer])
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    return timer.steps, timer.waits


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
) -> list[float]:
    """The seed's loop by hand. naive: the notebook as written (torch.rand batches, NCHW, fp32)."""
    pl.seed_everything(cfg.seed, verbose=False)
    module = build.build_module(cfg)
    net = module.net.to(device)
    if not naive and cfg.model.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if not naive and cfg.precision == "64-true":
        net = net.double()
    optimizer = module.optimizer_factory(net.parameters())
    loss_fn = LOSSES[cfg.loss.name].fn
    batches = iter(build.build_datamodule(cfg).train_dataloader())
    b, s = cfg.data.batch_size, cfg.data.image_size
    times: list[float] = []
    last = time.perf_counter()
    for i in range(warmup + steps):
        if naive:
            data, labels = (
                torch.rand(b, 3, s, s, device=device),
                torch.rand(b, cfg.model.num_classes, device=device),
            )
        else:
            data, labels = (t.to(device, non_blocking=True) for t in next(batches))
            if cfg.model.channels_last:
                data = data.contiguous(memory_format=torch.channels_last)
            if cfg.precision == "64-true":
                data = data.double()
        optimizer.zero_grad()
        with _autocast(cfg, device) if not naive else torch.autocast(device.type, enabled=False):
            prediction = net(data)
        loss = (prediction - labels).sum() if naive else loss_fn(prediction, labels)
        loss.backward()
        optimizer.step()
        _sync(device)
        now = time.perf_counter()
        if i >= warmup:  # timed from the previous step's end, as StepTimer does
            times.append(now - last)
        last = now
    return times


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


def run_benchmark(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """Every variant, interleaved over bench.rounds; the figures as a dict."""
    b = cfg.bench
    # Enough samples for one uninterrupted round: no epoch boundary (and validation) inside it.
    train_cfg = merged(cfg, {"data": {"num_samples": cfg.data.batch_size * (b.warmup_steps + b.steps)},
                                      "trainer": {"max_steps": b.warmup_steps + b.steps}})  # fmt: skip
    OmegaConf.set_struct(train_cfg, False)
    train_cfg.trainer.enable_model_summary = False
    device = build.build_trainer(
        merged(train_cfg, BARE), Path(tempfile.mkdtemp())
    ).strategy.root_device
    variants: dict[str, Callable[[Path], tuple[list[float], list[float]]]] = {
        "plain": lambda _: (
            time_plain(train_cfg, device, b.warmup_steps, b.steps, naive=False),
            [],
        ),
        "pipeline": lambda d: time_trainer(train_cfg, b.warmup_steps, b.steps, d),
        "naive": lambda _: (time_plain(train_cfg, device, b.warmup_steps, b.steps, naive=True), []),
    }
    features = feature_variants(train_cfg)
    frequencies = features.pop("_frequencies")
    if b.features:
        bare = merged(train_cfg, BARE)
        variants["bare"] = lambda d: time_trainer(bare, b.warmup_steps, b.steps, d)
        for name, change in features.items():
            variant_cfg = merged(bare, change)
            variants[name] = lambda d, c=variant_cfg: time_trainer(c, b.warmup_steps, b.steps, d)  # type: ignore[misc]
    rounds = {name: Rounds() for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(b.rounds):
            for name, timed in variants.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                steps, waits = timed(
                    Path(tmp) / f"{r}-{len(rounds[name].step_s)}-{abs(hash(name))}"
                )
                rounds[name].add(steps, waits)
                rounds[name].peak_mb = max(rounds[name].peak_mb, peak_memory_mb(device))
        startup = time_startup(overrides, Path(tmp) / "startup") if b.startup else None
    return summarize(rounds, cfg.data.batch_size, frequencies, startup, device)


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
        "per_round_step_s": {name: r.step_s for name, r in rounds.items()},
    }
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
    table.add_column("cost vs bare", justify="right")
    for name, ips in figures["images_per_sec"].items():
        cost = figures.get("instrument_costs", {}).get(name)
        table.add_row(name, f"{ips:.1f}", "" if cost is None else f"{cost:+.1%}")
    report.console.print(table)
    report.console.print(
        f"pipeline / plain = {figures['pipeline_over_plain']:.3f}   pipeline / naive = {figures['pipeline_over_naive']:.3f}   "
        f"data wait = {figures['data_wait_share']:.2%} of step time"
    )
    if figures["startup_to_first_step_s"] is not None:
        report.console.print(
            f"command to first training step: {figures['startup_to_first_step_s']:.2f} s"
        )


def validate_bench(cfg: DictConfig) -> list[str]:
    problems = validate(cfg)
    for key in ("rounds", "steps"):
        if not isinstance(cfg.bench[key], int) or cfg.bench[key] < 1:
            problems.append(
                f"bench.{key} must be an integer ≥ 1 (got {cfg.bench[key]!r}); set bench.{key}=5"
            )
    if not isinstance(cfg.bench.warmup_steps, int) or cfg.bench.warmup_steps < 0:
        problems.append(
            f"bench.warmup_steps must be an integer ≥ 0 (got {cfg.bench.warmup_steps!r}); set bench.warmup_steps=3"
        )
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
    else:
        figures = run_benchmark(cfg, list(HydraConfig.get().overrides.task))
        show(figures)
    if cfg.bench.output:
        Path(cfg.bench.output).write_text(json.dumps(figures, indent=2) + "\n")
        report.console.print(f"figures written to {cfg.bench.output}")


def main() -> None:
    """Console entry point `pipeline-bench`."""
    cli.run(bench, "bench", "pipeline.bench", validate_bench)


if __name__ == "__main__":
    main()

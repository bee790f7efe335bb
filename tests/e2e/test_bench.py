"""The bench's measuring code computes what it reports (no timing assertions)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from helpers import TINY, cli_env, run_cli
from pipeline.bench import outside
from pipeline.bench.clock import StepClock, StepTimer
from pipeline.bench.loops import BenchStopped, time_trainer
from pipeline.bench.modes import measure
from pipeline.cli import compose


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_step_timer_skips_warmup_and_times_each_step(tmp_path: Path) -> None:
    timer = StepTimer(warmup_steps=2, total_steps=7, device=torch.device("cpu"))
    trainer = pl.Trainer(max_steps=7, callbacks=[timer, timer.end_mark], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.fit(_Tiny(), DataLoader(TensorDataset(torch.rand(20, 3)), batch_size=2))
    assert len(timer.steps) == 7 - 2  # steps 2…6, each from the end of the one before
    assert timer.first_step_s is not None and timer.first_step_s > 0
    # The window from the end of step 1 to the end of step 6, per timed step: on a CPU, where
    # nothing runs ahead, the same as the mean of the steps.
    assert timer.mean_step_s == pytest.approx(sum(timer.steps) / 5, rel=1e-6)
    assert all(0 <= w <= s for w, s in zip(timer.waits, timer.steps, strict=True))


def test_bench_command_runs_and_writes_json(tmp_path: Path, torch_home: Path) -> None:
    """The one run of the real command: every mode of the default bench (variants, an
    instrument, a knob, the data path, a real `python -m pipeline.train` for the start-up) and
    bench.output."""
    args = ["debug=fast", "bench.rounds=1", "bench.steps=2", "bench.warmup_steps=1",
            "bench.features=[progress_bar]",  # every instrument: tests/unit/test_bench.py
            'bench.knobs=["model.channels_last=true","device.tf32=true"]',
            f"bench.output={tmp_path / 'bench.json'}"]  # fmt: skip
    # The bench forked warm; its start-up run a real interpreter (tests/warm_python.py)
    env = cli_env(torch_home) | {"PIPELINE_TESTS_COLD_CHILDREN": "1"}
    result = run_cli("pipeline.bench", args, tmp_path, torch_home, env=env)
    assert result.returncode == 0, result.stderr
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert set(figures["images_per_sec"]) == {"plain", "pipeline", "naive", "bare", "+progress bar",
                                              "pipeline model.channels_last=true"}  # fmt: skip
    assert list(figures["instrument_costs"]) == ["+progress bar"]
    hooks = figures["hook_us_per_step"]  # each Trainer variant's callbacks, µs a step
    assert {"GradientLogger", "AnalyticGradientCheck", "NonFiniteGuard"} <= set(hooks["pipeline"])
    assert "GradientLogger" not in hooks["bare"] and "ProgressBar" in hooks["+progress bar"]
    assert all(us > 0 for us in hooks["pipeline"].values())
    assert "pipeline callbacks' per-step hooks, a step: " in result.stdout
    assert all(v > 0 for v in figures["images_per_sec"].values())
    one_image = 3 * 75_200_000  # a 32×32 forward is ~75.2 M FLOPs, a training step ~3 of them
    for name, ips in figures["images_per_sec"].items():  # the model's training TFLOP/s
        assert figures["model_tflops_per_sec"][name] == pytest.approx(
            one_image * ips / 1e12, rel=1e-2
        )
    assert "TFLOP/s" in result.stdout  # the table's column
    assert "pipeline / plain" in result.stdout
    assert list(figures["knob_effects"]) == ["pipeline model.channels_last=true"]
    assert figures["knobs_skipped"] == ["device.tf32=true (CUDA only)"]
    data = figures["data"]
    assert (data["image_size"], data["batch_size"], data["device"]) == (32, 4, "cpu")
    assert data["make_us_per_image"] > 0 and 0 < data["share_of_step"] < 1
    speedup = data["numpy_us_per_image"] / data["make_us_per_image"]
    assert data["make_over_numpy_speedup"] == pytest.approx(speedup)
    # The start-up run: a process of its own, whose imports alone take seconds.
    assert 1 < figures["startup_to_first_step_s"] < 240
    assert "command to first training step" in result.stdout


@pytest.mark.e2e  # fits a Trainer
def test_the_soak_samples_resident_memory_along_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose("bench", ["debug=fast", "data.num_samples=32", "callbacks=minimal", "loss=mse",
                             "bench.soak_steps=4", "bench.soak_every=2"])  # fmt: skip
    figures = measure(cfg, tmp_path, [])
    assert figures["steps"] == 4
    steps, mb = zip(*figures["resident_mb"], strict=True)
    assert steps == (1, 2, 4)  # after the first step, then every bench.soak_every
    assert all(50 < m < 64 * 1024 for m in mb)  # resident MB of a process that holds torch
    assert figures["growth_after_first_sample_mb"] == pytest.approx(mb[2] - mb[1])
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()  # a real run, in the run directory
    out = capsys.readouterr().out
    assert "step       4:" in out and "growth from step 2 to the end" in out
    json.dumps(figures)  # bench.output writes it as JSON


@pytest.mark.e2e  # fits Trainers
def test_the_overhead_mode_times_three_loops_around_a_zero_cost_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose("bench", ["data.image_size=8", "data.batch_size=4", "loss=mse",
                             "bench.overhead_steps=6", "bench.rounds=2"])  # fmt: skip
    figures = measure(cfg, tmp_path, [])
    us = figures["us_per_step"]
    assert set(us) == {"plain", "lightning", "pipeline", "pipeline, no logging step"}
    assert all(len(v) == 2 for v in figures["per_round_step_us"].values())  # one per round
    assert len(figures["hooks_timed_round_step_us"]) == 2  # its own loop: not the pipeline's figure
    assert figures["lightning_over_plain_us"] == pytest.approx(us["lightning"] - us["plain"])
    assert figures["pipeline_over_lightning_us"] == pytest.approx(us["pipeline"] - us["lightning"])
    # The pipeline's loop ran its callbacks (the guard every step, the logger on logging steps)
    # on the zero-cost model, whose blocks carry ResNet18's names.
    assert {"NonFiniteGuard", "GradientLogger", "Throughput"} <= set(figures["hook_us_per_step"])
    assert all(0 < v < 10**7 for v in us.values())  # µs a step: a step of this model, not seconds
    out = " ".join(capsys.readouterr().out.split())  # the console wraps its lines
    assert "Lightning's loop over the plain one" in out and "the pipeline over Lightning's" in out
    split = figures["every_step_over_lightning_paired_us"] + figures["logging_steps_paired_us"]
    assert split == pytest.approx(figures["pipeline_over_lightning_paired_us"])
    assert "of which every step pays" in out and "the logging steps add" in out
    json.dumps(figures)  # bench.output writes it as JSON


@pytest.mark.e2e  # starts processes, and the real commands the mode times
def test_the_outside_mode_times_real_processes(
    tmp_path: Path,
    torch_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The mode's loop times processes from outside (here ones that sleep 0.1 s a step, so the
    subtraction has a known answer), and the two commands it builds run: each would be a fresh
    interpreter when timed (~7 s of imports here), so they run as the suite's warm processes."""
    # 1 and 5 steps: a process's start varies by ~0.1 s under the suite's load, which over 2
    # steps of difference (1 and 3) once read 0.049 s a step (fresh-clone CI)
    monkeypatch.setattr(outside, "SHORT", 1)
    overrides = [
        *TINY,
        "loss=mse",
        "logger=none",
        "bench.outside_rounds=2",
        "bench.outside_steps=5",
    ]
    cfg = compose("bench", overrides)
    built = outside.commands(cfg, overrides, 2, tmp_path / "run")
    sleeper = "import sys, time; time.sleep(0.1 * int(sys.argv[1]))"
    monkeypatch.setattr(outside, "commands", lambda cfg, overrides, steps, run_dir: {
        name: [sys.executable, "-c", sleeper, str(steps)] for name in outside.LOOPS
    })  # fmt: skip
    figures = measure(cfg, tmp_path, overrides)
    walls = figures["wall_s"]
    assert set(walls) == {"pipeline", "plain"} and all(set(w) == {"1", "5"} for w in walls.values())
    assert all(len(v) == 2 and 0.1 < v[0] < 600 for w in walls.values() for v in w.values())
    step = figures["per_round_step_s"]["pipeline"][0]
    assert step == pytest.approx((walls["pipeline"]["5"][0] - walls["pipeline"]["1"][0]) / 4)
    assert all(0.05 < s < 0.5 for s in figures["step_s"].values())  # 0.1 s a step, and noise
    assert "pipeline / plain =" in capsys.readouterr().out
    json.dumps(figures)
    for name, command in built.items():  # [python, -m, module, *args]
        assert command[:2] == [sys.executable, "-m"], command
        result = run_cli(command[2], command[3:], tmp_path, torch_home)
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    assert "loss " in result.stdout and "after 2 steps" in result.stdout  # the plain script's


def test_a_diverging_bench_run_stops_with_a_clear_message(tmp_path: Path, torch_home: Path) -> None:
    """The seed's loss overflows sooner at a higher learning rate: the bench says so, exit 3."""
    args = ["debug=fast", "optimizer.lr=10", "bench.rounds=1", "bench.steps=6", "bench.warmup_steps=1",
            "bench.features=false", "bench.startup=false", "bench.knobs=[]"]  # fmt: skip
    result = run_cli("pipeline.bench", args, tmp_path, torch_home)
    assert result.returncode == 3, result.stderr
    assert "pipeline.bench: a timed run diverged" in result.stderr
    assert "bench with loss=mse" in result.stderr


def test_a_signal_during_a_timed_run_stops_the_bench_without_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (or Ctrl-C) in a round: the Trainer stops at the step, and the bench says so
    instead of averaging a round that timed nothing."""
    cfg = compose("bench", ["debug=fast", "data.num_samples=32", "callbacks=minimal", "loss=mse"])
    step_end = StepClock.step_end

    def signalled_step_end(clock: StepClock) -> bool:
        if clock._seen == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return step_end(clock)

    monkeypatch.setattr(StepClock, "step_end", signalled_step_end)
    with pytest.raises(BenchStopped) as stopped:
        time_trainer(cfg, 1, 4, tmp_path)
    assert stopped.value.signum == signal.SIGTERM

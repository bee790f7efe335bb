"""The bench's measuring code computes what it reports (no timing assertions)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pipeline.bench.clock import StepClock, synced_points
from pipeline.bench.config import validate_bench
from pipeline.bench.data_path import numpy_reference_images
from pipeline.bench.loops import BenchStopped, stop_on_signals
from pipeline.bench.modes import measure
from pipeline.bench.outside import (
    SHORT,
    TimedProcessFailed,
    commands,
    median_interval,
    outside_figures,
    wall_clock,
)
from pipeline.bench.overhead import (
    QUIET,
    ZeroCostNet,
    overhead_figures,
    paired_difference_us,
    zero_cost_module,
)
from pipeline.bench.run import round_config, round_order, variants_of
from pipeline.bench.show import show_outside
from pipeline.bench.stats import Rounds, amortized, data_share, relative_cost, summarize
from pipeline.bench.variants import bare_config, instrument_frequencies, knob_configs, parse_knob
from pipeline.callbacks.provenance import RUN_JSON, STARTUP_KEY, Provenance
from pipeline.cli import compose
from pipeline.gradients import BLOCKS, block_index, histograms


def test_rounds_report_mean_per_round_and_median_over_rounds() -> None:
    r = Rounds()
    r.add([0.1, 0.3], [0.01, 0.03])  # mean 0.2, waits 0.04 of 0.4
    r.add([0.4, 0.4], [0.0, 0.0])
    r.add([0.25, 0.25], [])
    assert r.step_s == pytest.approx([0.2, 0.4, 0.25])
    assert r.images_per_sec(32) == pytest.approx(32 / 0.25)
    assert r.wait_share == pytest.approx([0.1, 0.0])


def test_rounds_keep_the_first_rounds_first_step_and_their_spread() -> None:
    r = Rounds()
    r.add([0.2], [], first_step_s=40.0)  # round 1 compiles
    r.add([0.3], [], first_step_s=0.3)
    r.add([0.25], [], first_step_s=0.25)
    assert r.first_step_s == 40.0
    assert r.spread() == pytest.approx((0.3 - 0.2) / 2 / 0.25)


def test_round_order_turns_so_no_variant_keeps_its_place_or_neighbour() -> None:
    names = ["plain", "pipeline", "naive", "bare"]
    orders = [round_order(names, r) for r in range(len(names))]
    assert all(sorted(o) == sorted(names) for o in orders)
    assert {o[0] for o in orders} == set(names)  # each variant runs first once
    for name in names:
        before = {o[o.index(name) - 1] for o in orders if o.index(name) > 0}
        assert len(before) > 1, (name, orders)


def test_knobs_parse_apply_alone_and_skip_cuda_ones_on_a_cpu() -> None:
    assert parse_knob("model.channels_last=true") == ("model.channels_last", True)
    assert parse_knob("precision=bf16-mixed") == ("precision", "bf16-mixed")
    assert parse_knob(" data.num_workers=2") == ("data.num_workers", 2)
    with pytest.raises(ValueError, match="is not KEY=VALUE"):
        parse_knob("model.channels_last")
    cfg = compose("bench", ['bench.knobs=["model.channels_last=true","device.tf32=true"]'])
    variants, skipped = knob_configs(cfg, torch.device("cpu"))
    (name,) = variants
    assert name == "pipeline model.channels_last=true"
    assert variants[name].model.channels_last is True and cfg.model.channels_last is False
    assert skipped == ["device.tf32=true (CUDA only)"]
    assert len(knob_configs(cfg, torch.device("cuda"))[0]) == 2
    null = compose("bench", ['bench.knobs=["device.tf32=null"]'])
    (tf32_null,) = knob_configs(null, torch.device("cuda"))[0].values()
    assert tf32_null.device.tf32 is None  # YAML's null, not the string "None"


@pytest.mark.parametrize(
    ("knob", "expected"),
    [
        ("model.chanels_last=true", "the config has no key model.chanels_last"),
        ("channels_last", "is not KEY=VALUE"),
        ("data.batch_size=0", "bench.knobs entry 'data.batch_size=0': data.batch_size must be ≥ 1"),
    ],
)
def test_bad_knobs_are_named(knob: str, expected: str) -> None:
    problems = validate_bench(compose("bench", [f'bench.knobs=["{knob}"]']))
    assert any(expected in p for p in problems), problems


def test_costs_and_ratios() -> None:
    assert relative_cost(1.03, 1.0) == pytest.approx(0.03)
    assert amortized(0.5, 100) == pytest.approx(0.005)
    assert amortized(0.5, 0) == 0.0
    rounds = {
        name: Rounds([s], [0.01])
        for name, s in {"plain": 1.0, "pipeline": 1.25, "naive": 2.0, "bare": 1.0}.items()
    }
    rounds["+histograms (every step)"] = Rounds([3.0])
    rounds["+analytic check (every step)"] = Rounds([1.5])
    rounds["+norms and update ratios (every step)"] = Rounds([1.2])
    frequencies = instrument_frequencies(compose("bench", []))
    assert frequencies == {"norms": 4, "histograms": 100, "check": 50}  # the defaults
    out = summarize(rounds, 32, frequencies, 4.2, torch.device("cpu"))
    assert out["pipeline_over_plain"] == pytest.approx(0.8)
    assert out["pipeline_over_naive"] == pytest.approx(1.6)
    assert out["images_per_sec"]["pipeline"] == pytest.approx(25.6)
    assert out["instrument_costs"]["+histograms (every step)"] == pytest.approx(2.0)
    assert out["amortized_default_costs"] == pytest.approx(
        {"norms and update ratios": 0.05, "histograms": 0.02, "analytic check": 0.01}
    )
    assert out["data_wait_share"] == pytest.approx(0.01)
    assert out["knob_effects"] == {}
    rounds["pipeline model.channels_last=true"] = Rounds([1.0])
    out = summarize(rounds, 32, frequencies, None, torch.device("cpu"))
    assert out["knob_effects"] == {"pipeline model.channels_last=true": pytest.approx(-0.2)}
    json.dumps(out)  # bench.output writes it as JSON


def test_a_run_records_its_startup_in_run_json(tmp_path: Path) -> None:
    """What the bench's start-up figure reads: the run's own record, not its log."""
    trainer = SimpleNamespace(is_global_zero=True, loggers=[])
    Provenance(run_dir=tmp_path, info={"command": ["python"]}).on_train_start(trainer, None)
    record = json.loads((tmp_path / RUN_JSON).read_text())
    assert record["command"] == ["python"]
    assert 0 < record[STARTUP_KEY] < 24 * 3600  # this process started before the test


def test_the_device_is_synchronized_only_at_the_ends_of_the_timed_window() -> None:
    assert synced_points(warmup=3, total=23) == (2, 22)  # timed: steps 3…22
    assert synced_points(warmup=1, total=5) == (0, 4)
    r = Rounds()
    r.add([0.1, 0.1], [], mean_step_s=0.3)  # host intervals ran ahead; the synced window decides
    assert r.step_s == [0.3]


def test_the_data_wait_leaves_out_what_callbacks_do_after_the_step(tmp_path: Path) -> None:
    """The wait was timed from the StepTimer's own batch end, which runs before the pipeline's
    callbacks: a logging step's update norms (the gradient logger's on_train_batch_end) counted
    as waiting for data. It is timed from the last batch-end hook now (StepTimer.end_mark)."""
    import lightning.pytorch as pl

    from pipeline import build
    from pipeline.bench.clock import StepTimer

    class SlowBatchEnd(pl.Callback):
        def on_train_batch_end(self, *args: object) -> None:
            time.sleep(0.05)

    cfg = round_config(compose("bench", ["data.image_size=8", "loss=mse", "bench.steps=4"]))
    timer = StepTimer(2, 6, torch.device("cpu"))
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=cfg.trainer.max_steps, logger=False,
        callbacks=[timer, SlowBatchEnd(), timer.end_mark], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(zero_cost_module(cfg), datamodule=build.build_datamodule(cfg))
    assert len(timer.steps) == len(timer.waits) == 4
    assert min(timer.steps) >= 0.05 and max(timer.waits) < 0.025, (timer.steps, timer.waits)


def test_histogram_fields_match_the_tensor() -> None:
    t = torch.tensor([0.0, 1.0, 1.0, 3.0, 4.0])
    h, constant = histograms([t, torch.ones(3)], bins=4)
    assert (h["min"], h["max"], h["num"], h["sum"], h["sum_squares"]) == (0.0, 4.0, 5, 9.0, 27.0)
    assert h["bucket_limits"] == [1.0, 2.0, 3.0, 4.0] and sum(h["bucket_counts"]) == 5
    assert constant["bucket_counts"] == [3.0]
    # A finite gradient past float32's sum of squares (bf16-true's exploding layer4): its
    # sum_squares read inf (review); summed in float64 it is the values' own.
    (big,) = histograms([torch.tensor([-2.0e34, 1.25e34])], bins=4)
    assert big["sum_squares"] == pytest.approx(2.0e34**2 + 1.25e34**2, rel=1e-6)


def test_histograms_of_many_tensors_match_numpy_each() -> None:
    import numpy as np

    g = torch.Generator().manual_seed(0)
    tensors = [
        torch.randn(50, generator=g),
        torch.full((4, 2), 2.5),
        torch.rand(3, 7, generator=g) * 9,
    ]
    for t, h in zip(tensors, histograms(tensors, bins=8), strict=True):
        values = t.flatten().double().numpy()
        assert h["num"] == values.size
        assert h["sum"] == pytest.approx(values.sum(), rel=1e-5)
        assert h["sum_squares"] == pytest.approx((values**2).sum(), rel=1e-5)
        if values.min() == values.max():
            assert (h["bucket_limits"], h["bucket_counts"]) == ([2.5], [8.0])
            continue
        counts, edges = np.histogram(values, bins=8)
        assert h["bucket_counts"] == pytest.approx(counts.tolist())
        assert h["bucket_limits"] == pytest.approx(edges[1:].tolist(), rel=1e-6)


def test_the_data_path_alone_against_the_numpy_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose("bench", ["bench.data_only=true", "data.image_size=16", "data.batch_size=4",
                             "bench.rounds=2"])  # fmt: skip
    figures = measure(cfg, tmp_path, [])
    assert set(figures) == {"image_size", "batch_size", "device", "compiled", "make_us_per_image",
                            "numpy_us_per_image", "make_over_numpy_speedup",
                            "page_faults_per_batch"}  # fmt: skip
    faults = figures["page_faults_per_batch"]  # the kernel's count while each path ran
    assert set(faults) == {"make", "numpy"} and all(n >= 0 for n in faults.values())
    assert figures["compiled"] is False  # auto: a 16×16 image on a CPU is made eagerly
    assert (figures["image_size"], figures["batch_size"], figures["device"]) == (16, 4, "cpu")
    speedup = figures["numpy_us_per_image"] / figures["make_us_per_image"]
    assert figures["make_over_numpy_speedup"] == pytest.approx(speedup)
    assert "µs an image (eager, 16×16, batch 4, cpu)" in capsys.readouterr().out.replace("\n", "")
    json.dumps(figures)  # bench.output writes it as JSON


def test_a_data_path_slower_than_numpy_is_called_slower() -> None:
    """A noisy round printed "0.01× faster" for a path 70 times slower."""
    from pipeline.bench.show import faster_or_slower

    assert faster_or_slower(12.5) == "12.50× faster"
    assert faster_or_slower(1 / 70) == "70.00× slower"


def test_the_data_share_of_a_step() -> None:
    assert data_share(make_us_per_image=50.0, batch=256, step_s=0.0256) == pytest.approx(0.5)


def test_the_numpy_reference_is_the_old_data_path() -> None:
    """Uniform float32 images, one PCG64 stream per sample: what the DataLoader's workers made."""
    import numpy as np

    images = numpy_reference_images(range(2, 4), seed=7, image_size=8, channels=3)
    assert images.shape == (2, 3, 8, 8) and images.dtype == torch.float32
    stream = np.random.Generator(np.random.PCG64(np.random.SeedSequence([7, 0, 3])))
    assert torch.equal(images[1], torch.from_numpy(stream.random((3, 8, 8), dtype=np.float32)))


def test_warmup_needs_a_step_before_the_timed_window() -> None:
    problems = validate_bench(compose("bench", ["bench.warmup_steps=0"]))
    assert any("bench.warmup_steps must be ≥ 1 (got 0)" in p for p in problems), problems


def test_two_modes_at_once_or_a_mode_flag_not_true_or_false_are_refused() -> None:
    """The bench ran the first mode set and dropped the others without a word, and took
    bench.data_only=maybe for true (hostile review)."""
    problems = validate_bench(compose("bench", ["bench.data_only=true", "bench.soak_steps=5"]))
    assert problems == [
        "bench.soak_steps=5 and bench.data_only=true each choose what the bench measures, and it "
        "measures one a command; keep one of them"
    ]
    problems = validate_bench(compose("bench", ["bench.data_only=maybe", "bench.startup=1"]))
    assert [p.split(" (got")[0] for p in problems] == [
        "bench.data_only must be true or false",
        "bench.startup must be true or false",
    ]
    assert validate_bench(compose("bench", ["bench.overhead_steps=5"])) == []


def test_a_soak_that_samples_every_0_steps_is_refused() -> None:
    problems = validate_bench(compose("bench", ["bench.soak_steps=10", "bench.soak_every=0"]))
    assert "bench.soak_every must be ≥ 1 (got 0); set bench.soak_every=1000" in problems


def test_a_compiled_data_path_is_timed_against_the_eager_hash_too(tmp_path: Path) -> None:
    cfg = compose("bench", ["bench.data_only=true", "data.image_size=16", "data.batch_size=4",
                             "bench.rounds=2", "data.compile=true"])  # fmt: skip
    figures = measure(cfg, tmp_path, [])
    assert figures["compiled"] is True
    speedup = figures["eager_us_per_image"] / figures["make_us_per_image"]
    assert figures["make_over_eager_speedup"] == pytest.approx(speedup)


def test_bench_features_may_list_the_instruments_to_time() -> None:
    cfg = compose("bench", ["bench.features=[norms,check]"])
    assert validate_bench(cfg) == []
    variants, _ = variants_of(round_config(cfg), torch.device("cpu"))
    names = [n for n in variants if n.startswith(("+", "bare"))]
    assert names == ["bare", "+norms and update ratios (every 4)", "+analytic check (every step)"]
    everything, _ = variants_of(round_config(compose("bench", [])), torch.device("cpu"))
    assert len([n for n in everything if n.startswith("+")]) == 6
    problems = validate_bench(compose("bench", ["bench.features=[norms,grads]"]))
    assert problems == [
        "bench.features must be true, false or a list of norms, norms_every_step, noise_scale, "
        "histograms, check, progress_bar (got ['norms', 'grads']); "
        "set 'bench.features=[norms]'"
    ]


def test_the_hook_clock_times_the_pipelines_per_step_hooks_in_the_timed_steps_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning.pytorch import Callback

    from pipeline.bench import hook_clock

    now = [0.0]  # a clock that only the hooks move
    monkeypatch.setattr(hook_clock, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    class Slow(Callback):
        """A pipeline callback whose batch-end hook takes 1 s a call."""

        def on_train_batch_end(self, *args: object) -> None:
            now[0] += 1.0

    Slow.__module__ = "pipeline.callbacks.slow"  # a pipeline callback, as is_timed tells them

    class Other(Callback):  # not the pipeline's: left alone
        def on_train_batch_end(self, *args: object) -> None:
            now[0] += 100.0

    total = SimpleNamespace(ready=0)
    trainer = SimpleNamespace(callbacks=[Slow(), Other()],
                              fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                                  batch_progress=SimpleNamespace(total=total))))  # fmt: skip
    clock = hook_clock.HookClock(first_timed=2, steps=3)
    clock.on_fit_start(trainer, None)  # type: ignore[arg-type]
    for batch in range(8):  # batches 2, 3 and 4 are timed; each calls the hook twice
        total.ready = batch + 1  # as Lightning counts a batch ready before its hooks
        for callback in trainer.callbacks:
            callback.on_train_batch_end(trainer, None, None, None, batch)
            callback.on_train_batch_end(trainer, None, None, None, batch)
    assert clock.per_step() == {"Slow": 2.0}  # 2 calls of 1 s a timed step, of 3 timed steps


def test_bare_keeps_the_runs_logger_so_the_instruments_measure_what_they_cost() -> None:
    cfg = round_config(compose("bench", []))
    bare = bare_config(cfg)
    assert list(bare.logger) == list(cfg.logger) == ["tensorboard"]
    assert bare.logger.tensorboard.log_graph is False
    assert bare.callbacks.gradients.enabled is False and bare.callbacks.progress_bar is False
    # One untimed step after the window: a run's last step writes histograms.
    assert cfg.trainer.max_steps == cfg.bench.warmup_steps + cfg.bench.steps + 1


def test_the_step_clock_times_no_step_after_its_window() -> None:
    clock = StepClock(warmup=1, total=3, device=torch.device("cpu"))
    timed = [clock.step_end() for _ in range(5)]  # steps 0…4 of a run one step longer
    assert timed == [False, True, True, False, False] and len(clock.steps) == 2


def test_the_zero_cost_net_has_resnet18s_blocks_and_trains_every_parameter() -> None:
    net = ZeroCostNet(num_classes=5)
    names = [n for n, _ in net.named_parameters()]
    index = block_index(names)  # raises for a name outside ResNet18's blocks
    assert sorted(set(index.tolist())) == list(range(len(BLOCKS)))  # every block has parameters
    out = net(torch.rand(3, 3, 8, 8))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_overhead_figures_are_medians_and_their_differences() -> None:
    step_s = {"plain": [1e-3, 3e-3, 2e-3], "lightning": [4e-3, 5e-3, 6e-3],
              "pipeline": [6e-3, 6.5e-3, 7e-3]}  # fmt: skip
    figures = overhead_figures(step_s, {"Guard": [1e-5, 3e-5, 2e-5]})
    assert figures["us_per_step"] == pytest.approx(
        {"plain": 2000, "lightning": 5000, "pipeline": 6500}
    )
    assert figures["lightning_over_plain_us"] == pytest.approx(3000)
    assert figures["pipeline_over_lightning_us"] == pytest.approx(1500)
    assert figures["hook_us_per_step"] == pytest.approx({"Guard": 20})
    # Paired by round: differences 2000, 1500, 1000 µs.
    assert figures["pipeline_over_lightning_paired_us"] == pytest.approx(1500)
    assert figures["pipeline_over_lightning_paired_se_us"] == pytest.approx(500 / 3**0.5)
    assert "logging_steps_paired_us" not in figures  # no quiet loop: no split


def test_the_quiet_loop_splits_the_pipeline_s_cost_into_every_step_and_logging_steps() -> None:
    step_s = {"plain": [1e-3, 1e-3], "lightning": [4e-3, 6e-3], "pipeline": [6e-3, 9e-3],
              QUIET: [5e-3, 6.5e-3]}  # fmt: skip
    figures = overhead_figures(step_s, {})
    # every step: 1000 and 500 µs over Lightning; the logging steps: 1000 and 2500 more
    assert figures["every_step_over_lightning_paired_us"] == pytest.approx(750)
    assert figures["every_step_over_lightning_paired_se_us"] == pytest.approx(250)
    assert figures["logging_steps_paired_us"] == pytest.approx(1750)
    assert figures["logging_steps_paired_se_us"] == pytest.approx(750)
    assert figures["pipeline_over_lightning_paired_us"] == pytest.approx(750 + 1750)


def test_a_paired_difference_is_the_mean_of_each_round_s_difference_with_its_error() -> None:
    pipeline, lightning = [3e-3, 9e-3, 4e-3, 2e-3], [2e-3, 7e-3, 3e-3, 2e-3]  # 1000 2000 1000 0 µs
    mean, se = paired_difference_us(pipeline, lightning)
    assert mean == pytest.approx(1000)
    assert se == pytest.approx(statistics.stdev([1000, 2000, 1000, 0]) / 2)
    assert paired_difference_us([1e-3], [5e-4]) == (pytest.approx(500), None)  # one round


def test_outside_step_times_are_differences_of_wall_clocks_over_the_steps_between() -> None:
    long = 104  # bench.outside_steps: the steps between are read from the walls' keys
    walls = {"pipeline": {SHORT: [10.0, 11.0, 30.0], long: [50.0, 52.0, 60.0]},
             "plain": {SHORT: [2.0, 2.0, 2.0], long: [40.0, 42.0, 41.0]}}  # fmt: skip
    figures = outside_figures(walls)
    steps = long - SHORT
    assert figures["per_round_step_s"]["pipeline"] == pytest.approx(
        [40 / steps, 41 / steps, 30 / steps]
    )
    assert figures["step_s"] == pytest.approx({"pipeline": 40 / steps, "plain": 39 / steps})
    assert figures["pipeline_over_plain"] == pytest.approx(39 / 40)
    # Each round's own ratio (plain's step over the pipeline's: images/s), paired
    ratios = [38 / 40, 40 / 41, 39 / 30]
    assert figures["per_round_ratio"] == pytest.approx(ratios)
    assert figures["paired_ratio"] == pytest.approx(40 / 41)  # their median
    assert figures["interval"] is None  # 3 rounds: an interval for the median takes 5
    assert figures["verdict"] == "not resolved"
    # ± a round: half the range over the median
    assert figures["round_spread"] == pytest.approx({"pipeline": 5.5 / 40, "plain": 1 / 39})
    json.dumps(figures, allow_nan=False)  # bench.output: valid JSON


@pytest.mark.parametrize(
    ("plain_long", "verdict"),
    [
        ([41.0, 41.3, 40.8, 41.2, 41.1], "above"),  # ratios 0.972–0.983: all past 0.97
        ([38.0, 38.2, 37.9, 38.1, 38.0], "below"),  # 0.898–0.905
        ([41.0, 36.0, 44.0, 39.0, 40.0], "not resolved"),  # 0.85–1.05
        ([41.0, 41.3, 20.0, 41.2, 41.1], "not resolved"),  # one slow round: the range holds 0.97
    ],
)
def test_the_outside_figures_say_where_the_paired_ratio_is_against_the_target(
    plain_long: list[float], verdict: str, capsys: pytest.CaptureFixture[str]
) -> None:
    walls = {"pipeline": {SHORT: [2.0] * 5, 44: [42.0, 42.2, 41.9, 42.1, 42.0]},
             "plain": {SHORT: [2.0] * 5, 44: plain_long}}  # fmt: skip
    figures = outside_figures(walls) | {"rounds": 5, "steps": [SHORT, 44], "image_size": 64,
                                        "batch_size": 32}  # fmt: skip
    assert figures["verdict"] == verdict
    ratios = sorted(figures["per_round_ratio"])
    assert figures["interval"] == [ratios[0], ratios[-1]]  # 5 rounds: the range, 93.75%
    assert figures["interval_coverage"] == pytest.approx(1 - 2 / 32)
    show_outside(figures)
    out = " ".join(capsys.readouterr().out.split())
    assert "paired by round: median " in out and "94% interval " in out
    if verdict == "not resolved":  # what narrows it, with the run's own settings
        assert "not resolved against 0.97 (issue 13's target): the interval holds 0.97" in out
        assert (
            "bench.outside_steps=44 now: 204 takes" in out and "bench.outside_rounds=5 now" in out
        )
    else:
        assert f"{verdict} 0.97 (issue 13's target), at 94%" in out and "not resolved" not in out


@pytest.mark.parametrize(("n", "k", "coverage"), [(5, 1, 1 - 2 / 32), (9, 2, 1 - 20 / 512),
                                                  (20, 6, 1 - 2 * 21700 / 2**20)])  # fmt: skip
def test_the_medians_interval_is_the_widest_order_statistics_that_hold_it_often_enough(
    n: int, k: int, coverage: float
) -> None:
    ratios = [1 + i / 100 for i in range(n)][::-1]  # any order
    bounds, held = median_interval(ratios)
    assert bounds == [1 + (k - 1) / 100, 1 + (n - k) / 100]
    assert held == pytest.approx(coverage) and held >= 0.93
    assert median_interval(ratios[:4]) == (None, None)  # 4 rounds: even their range is 87.5%


def test_the_outside_figures_name_no_longer_run_where_it_is_long_already(
    capsys: pytest.CaptureFixture[str],
) -> None:
    walls = {"pipeline": {SHORT: [2.0] * 3, 204: [202.0, 230.0, 202.0]},
             "plain": {SHORT: [2.0] * 3, 204: [200.0, 200.0, 230.0]}}  # fmt: skip
    show_outside(outside_figures(walls) | {"rounds": 3, "steps": [SHORT, 204], "image_size": 64,
                                           "batch_size": 32})  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    assert "(bench.outside_steps=204 now), more rounds" in out and "204 takes" not in out


@pytest.mark.parametrize("case", ["negative", "zero", "one round", "one round of three"])
def test_an_outside_figure_that_could_not_be_measured_says_so(
    case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A step time ≤ 0 (start-up's variation past the steps' own time: bench.outside_steps=5 on a
    busy machine read −444 ms a step) has no ratio, and no round's spread hides it; one round
    cannot say how much rounds vary (review)."""
    walls = {
        "negative": {"pipeline": {SHORT: [9.0, 9.5], 5: [8.5, 9.0]},
                     "plain": {SHORT: [3.0, 3.5], 5: [2.6, 3.1]}},
        "zero": {"pipeline": {SHORT: [9.0, 8.0], 5: [9.0, 8.0]},
                 "plain": {SHORT: [3.0, 3.0], 5: [3.0, 3.0]}},
        "one round": {"pipeline": {SHORT: [9.0], 44: [20.0]}, "plain": {SHORT: [3.0], 44: [12.0]}},
        "one round of three": {"pipeline": {SHORT: [9.0, 9.0, 9.0], 44: [8.0, 49.0, 48.0]},
                               "plain": {SHORT: [3.0] * 3, 44: [43.0, 42.0, 42.0]}},
    }[case]  # fmt: skip
    figures = outside_figures(walls)
    json.dumps(figures, allow_nan=False)  # no NaN or inf in bench.output
    assert figures["verdict"] == "not resolved" and figures["interval"] is None
    if case == "one round":
        assert figures["paired_ratio"] == pytest.approx((9 / 40) / (11 / 40))
    elif case == "one round of three":  # the two measured: their median
        assert figures["per_round_ratio"][0] is None
        assert figures["paired_ratio"] == pytest.approx(statistics.median([39 / 40, 39 / 39]))
    else:
        assert figures["pipeline_over_plain"] is None and figures["per_round_ratio"] == [None, None]
        assert figures["paired_ratio"] is None and figures["round_spread"]["pipeline"] is None
    long = max(walls["pipeline"])
    show_outside(figures | {"rounds": len(walls["plain"][SHORT]), "steps": [SHORT, long],
                            "image_size": 16, "batch_size": 4})  # fmt: skip
    out = " ".join(capsys.readouterr().out.split())
    if case == "one round":
        assert "target): an interval for the median takes 5 rounds, and this run had 1" in out
    elif case == "one round of three":
        assert "paired by round (2 of 3 rounds): median 0.988, lowest 0.975, highest 1.000" in out
        assert "target): 1 of 3 rounds had a step time ≤ 0" in out
    else:
        assert "pipeline / plain = not measured" in out
        assert "target): 2 of 2 rounds had a step time ≤ 0" in out


def test_outside_commands_take_the_runs_overrides_but_set_their_own_steps(tmp_path: Path) -> None:
    overrides = ["loss=mse", "data.image_size=48", "trainer.max_steps=9", "bench.outside_rounds=2"]
    cfg = compose("bench", overrides)
    pipeline, plain = commands(cfg, overrides, 7, tmp_path).values()
    assert pipeline[1:4] == ["-m", "pipeline.train", "loss=mse"]
    assert "trainer.max_steps=9" not in pipeline and "bench.outside_rounds=2" not in pipeline
    assert "trainer.max_steps=7" in pipeline and f"hydra.run.dir={tmp_path}" in pipeline
    assert f"data.num_samples={(44 + 1) * 32}" in pipeline  # no epoch's end, no validation
    assert plain[1:4] == ["-m", "pipeline.bench.plain_script", "--steps=7"]
    assert "--image-size=48" in plain and "--momentum=0.9" in plain
    longer = compose("bench", [*overrides, "bench.outside_steps=204"])
    pipeline = commands(longer, overrides, 204, tmp_path)["pipeline"]
    assert f"data.num_samples={(204 + 1) * 32}" in pipeline  # the long run's samples, and one more


def test_outside_mode_needs_mse_and_sgd() -> None:
    problems = validate_bench(compose("bench", ["bench.outside_rounds=3", "optimizer=adam"]))
    assert any(p.startswith("bench.outside_rounds times 44-step runs") for p in problems), problems
    assert any("set optimizer=sgd (got torch.optim.Adam)" in p for p in problems), problems


@pytest.mark.parametrize("removed", ["bench.outside_rounds", "bench.outside_steps", "bench.features",
                                     "bench.knobs", "bench.rounds"])  # fmt: skip
def test_a_bench_key_removed_is_one_line_naming_the_removal(removed: str) -> None:
    """~bench.outside_rounds: its rule read null, then the outside mode's check read the key and
    crashed (a traceback); ~bench.rounds was told "set bench.rounds=5", which Hydra refuses for a
    key that is not there."""
    outside = [] if removed == "bench.outside_rounds" else ["bench.outside_rounds=1", "loss=mse"]
    cfg = compose("bench", [f"~{removed}", *outside])
    [problem] = validate_bench(cfg)
    assert problem.startswith(f"{removed} is missing, and the run needs it"), problem
    assert f"~{removed}" in problem


@pytest.mark.parametrize("steps", ["4", "-1", "4.5", "many"])
def test_outside_steps_must_be_past_the_short_runs(steps: str) -> None:
    # the default loss (the seed's): the outside mode's loss line names the long runs' steps too
    cfg = compose("bench", ["bench.outside_rounds=3", f"bench.outside_steps={steps}"])
    problems = validate_bench(cfg)
    assert any(p.startswith("bench.outside_steps must be ") and "≥ 5 (got" in p for p in problems)
    [runs] = [p for p in problems if p.startswith("bench.outside_rounds times ")]
    assert runs.startswith("bench.outside_rounds times runs of bench.outside_steps against"), runs


def test_a_signal_while_the_bench_measures_stops_it_and_kills_the_process_it_waits_for() -> None:
    """SIGTERM during a process the outside mode times: BenchStopped (one line, exit 143 in
    __main__), the child killed, the handlers put back."""
    before = signal.getsignal(signal.SIGTERM)
    child = [
        sys.executable,
        "-c",
        "import os, time; print(os.getpid(), flush=True); time.sleep(60)",
    ]
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM))
    started = time.monotonic()
    with pytest.raises(BenchStopped) as stopped, stop_on_signals():
        timer.start()
        wall_clock(child)
    assert stopped.value.signum == signal.SIGTERM and time.monotonic() - started < 30
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_timed_process_that_fails_is_named_with_its_last_words() -> None:
    command = [sys.executable, "-c", "import sys; sys.exit('out of luck')"]
    with pytest.raises(TimedProcessFailed, match="exited 1: out of luck"):
        wall_clock(command)


def test_the_naive_loop_runs_nchw_whatever_channels_last_says() -> None:
    """The module converts its weights to NHWC under model.channels_last=true (gpu-check's
    224×224 bench), and cuDNN runs NHWC convolutions when the weight is NHWC: the "naive fp32
    NCHW" loop the ≥ 2× target is against ran channels_last."""
    from pipeline import build
    from pipeline.bench.loops import naive_net
    from pipeline.cli import compose

    cfg = compose("bench", ["model.channels_last=true", "data.image_size=16"])
    assert not build.build_module(cfg).net.conv1.weight.is_contiguous()  # the module's: NHWC
    net = naive_net(cfg, torch.device("cpu"))
    convolutions = [p for p in net.parameters() if p.dim() == 4]
    assert len(convolutions) == 20 and all(p.is_contiguous() for p in convolutions)

"""What the bench prints: the variants' table and its ratios, the data path's line, the soak's
resident memory."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from pipeline import report
from pipeline.bench.outside import MIN_ROUNDS, SUGGESTED_STEPS, TARGET
from pipeline.bench.overhead import QUIET


def show(figures: dict[str, Any]) -> None:
    """The interleaved benchmark's figures (`stats.summarize`, with `data` and `knobs_skipped`)."""
    table = Table(title=f"pipeline.bench on {figures['device']}, batch {figures['batch_size']}, "
                        f"medians of {figures['rounds']} rounds")  # fmt: skip
    table.add_column("variant")
    table.add_column("images/s", justify="right")
    table.add_column("model TFLOP/s", justify="right")
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
        tflops = figures.get("model_tflops_per_sec", {}).get(name)
        table.add_row(name, f"{ips:.1f}", "" if tflops is None else f"{tflops:.3g}",
                      f"{figures['round_spread'][name]:.1%}", costs.get(name, ""),
                      "" if first is None else f"{first:.2f} s",
                      f"{figures['peak_memory_mb'][name] / 1024:.2f} GB")  # fmt: skip
    report.console.print(table)
    report.console.print(
        f"pipeline / plain = {figures['pipeline_over_plain']:.3f}   pipeline / naive = {figures['pipeline_over_naive']:.3f}   "
        f"data wait = {figures['data_wait_share']:.2%} of step time"
    )
    show_hooks(figures["hook_us_per_step"].get("pipeline", {}), figures["images_per_sec"]["pipeline"],
               figures["batch_size"])  # fmt: skip
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


def show_hooks(hook_us: dict[str, float], images_per_sec: float, batch: int) -> None:
    """The pipeline variant's time in each callback's per-step hooks, µs a step and share of it."""
    step_us = batch / images_per_sec * 1e6
    parts = [f"{name} {us:.0f} µs ({us / step_us:.2%})"
             for name, us in sorted(hook_us.items(), key=lambda item: -item[1])]  # fmt: skip
    report.console.print(
        f"pipeline callbacks' per-step hooks, a step: {', '.join(parts)}; "
        f"all {sum(hook_us.values()):.0f} µs ({sum(hook_us.values()) / step_us:.2%})"
    )


def show_data(data: dict[str, Any]) -> None:
    """The data path's figures (`data_path.time_data`, with `share_of_step` in a full bench)."""
    share = (
        f"; making a batch is {data['share_of_step']:.2%} of a pipeline step"
        if "share_of_step" in data
        else ""
    )
    eager = (
        f", {faster_or_slower(data['make_over_eager_speedup'])} than the eager hash "
        f"({data['eager_us_per_image']:.1f} µs)"
        if "eager_us_per_image" in data
        else ""
    )
    report.console.print(
        f"data: {data['make_us_per_image']:.1f} µs an image "
        f"({'compiled' if data['compiled'] else 'eager'}, {data['image_size']}×{data['image_size']}, batch "
        f"{data['batch_size']}, {data['device']}) against {data['numpy_us_per_image']:.1f} µs on the old numpy "
        f"path: {faster_or_slower(data['make_over_numpy_speedup'])}{eager}{share}"
    )


def faster_or_slower(speedup: float) -> str:
    """A speed ratio in words: 2.50× faster, or 70.00× slower (not "0.01× faster")."""
    return f"{speedup:.2f}× faster" if speedup >= 1 else f"{1 / speedup:.2f}× slower"


def show_soak(figures: dict[str, Any], every: int) -> None:
    """The soak's resident memory at each sample, and its growth after the first `every` steps."""
    for step, mb in figures["resident_mb"]:
        report.console.print(f"step {step:>7}: {mb:8.1f} MB resident")
    report.console.print(
        f"growth from step {every} to the end: {figures['growth_after_first_sample_mb']:+.1f} MB"
    )


def _paired(figures: dict[str, Any], name: str) -> str:
    """`name`_paired_us with its standard error, as '+X ± SE'."""
    se = figures[f"{name}_paired_se_us"]
    return f"{figures[f'{name}_paired_us']:+.0f}" + ("" if se is None else f" ± {se:.0f}")


def show_overhead(figures: dict[str, Any]) -> None:
    """The loops' own cost a step (`overhead.run_overhead`): each loop, then the differences."""
    us = figures["us_per_step"]
    report.console.print(
        f"a step with a zero-cost model ({figures['image_size']}×{figures['image_size']}, batch "
        f"{figures['batch_size']}, {figures['device']}, medians of {figures['rounds']} rounds of "
        f"{figures['steps']} steps): plain {us['plain']:.0f} µs, lightning {us['lightning']:.0f} µs, "
        f"pipeline {us['pipeline']:.0f} µs"
    )
    report.console.print(
        f"Lightning's loop over the plain one: {figures['lightning_over_plain_us']:+.0f} µs a step; "
        f"the pipeline over Lightning's: {figures['pipeline_over_lightning_us']:+.0f} µs a step"
    )
    se = figures["pipeline_over_lightning_paired_se_us"]
    report.console.print(
        f"the pipeline over Lightning's, paired by round: "
        f"{figures['pipeline_over_lightning_paired_us']:+.0f}"
        + ("" if se is None else f" ± {se:.0f} (standard error)")
        + " µs a step (many short rounds narrow it: bench.rounds=60 bench.overhead_steps=100)"
    )
    if "every_step_over_lightning_paired_us" in figures:
        report.console.print(
            "of which every step pays "
            f"{_paired(figures, 'every_step_over_lightning')} µs (the pipeline with no logging "
            f"step in the window, {us[QUIET]:.0f} µs a step, over Lightning's) and the logging "
            "steps add "
            f"{_paired(figures, 'logging_steps')} µs a step, amortized"
        )
    parts = [f"{name} {v:.0f} µs"
             for name, v in sorted(figures["hook_us_per_step"].items(), key=lambda item: -item[1])]  # fmt: skip
    report.console.print(
        f"pipeline callbacks' per-step hooks, a step (timed in a fourth loop of the pipeline, "
        f"whose clock the figures above leave out): {', '.join(parts)}"
    )


def show_outside(figures: dict[str, Any]) -> None:
    """Real runs timed from outside (`outside.run_outside`): each one's step time, and the ratio."""
    short, long = figures["steps"]
    step = figures["step_s"]
    report.console.print(
        f"timed from outside ({figures['image_size']}×{figures['image_size']}, batch "
        f"{figures['batch_size']}, {long}-step run minus {short}-step run, medians of "
        f"{figures['rounds']} rounds): pipeline.train {step['pipeline'] * 1e3:.1f} ms a step, "
        f"the plain loop script {step['plain'] * 1e3:.1f} ms"
    )
    ratio = figures["pipeline_over_plain"]
    report.console.print(
        "pipeline / plain = "
        + ("not measured" if ratio is None else f"{ratio:.3f}")
        + " (images/s)"
    )
    ratios = figures["per_round_ratio"]
    measured = [r for r in ratios if r is not None]
    if measured:
        bounds = figures["interval"]
        within = (
            ""
            if bounds is None
            else f", {figures['interval_coverage']:.0%} interval {bounds[0]:.3f}–{bounds[1]:.3f}"
        )
        rounds = (
            "" if len(measured) == len(ratios) else f" ({len(measured)} of {len(ratios)} rounds)"
        )
        report.console.print(
            f"paired by round{rounds}: median {figures['paired_ratio']:.3f}{within}, lowest "
            f"{min(measured):.3f}, highest {max(measured):.3f}"
        )
    if figures["verdict"] != "not resolved":
        coverage = figures["interval_coverage"]
        report.console.print(
            f"{figures['verdict']} {TARGET} (issue 13's target), at {coverage:.0%}"
        )
        return
    if len(measured) < len(ratios):
        why = (f"{len(ratios) - len(measured)} of {len(ratios)} rounds had a step time ≤ 0 "
               "(the processes' start-up varied by more than the steps between took)")  # fmt: skip
    elif len(ratios) < MIN_ROUNDS:
        why = (
            f"an interval for the median takes {MIN_ROUNDS} rounds, and this run had {len(ratios)}"
        )
    else:
        why = f"the interval holds {TARGET}"
    long = figures["steps"][1]
    hint = (
        ""
        if long >= SUGGESTED_STEPS
        else f": {SUGGESTED_STEPS} takes ±1 s of start-up to ±5 ms a step"
    )
    report.console.print(
        f"not resolved against {TARGET} (issue 13's target): {why}; narrow it with more steps "
        f"between the runs (bench.outside_steps={long} now{hint}), more rounds "
        f"(bench.outside_rounds={len(ratios)} now), or a quieter moment"
    )

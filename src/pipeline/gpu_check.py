"""`make gpu-check` (`python -m pipeline.gpu_check`): every check that needs a GPU, in one call.

On a CUDA machine, in under 8 minutes on one H200: installs what a bare GPU machine lacks
(hydra-core, omegaconf, google-crc32c) from wheels carried in wheels/ (pipeline.gpu_check_install);
runs the tests marked `gpu`; benches 224×224 batch 256 `precision=bf16-mixed
model.channels_last=true loss=mse` (pipeline, plain loop, naive fp32 NCHW loop) and the defaults'
64×64 batch 32; then, while the 8 minutes allow: CUDA graphs (`model.compile=reduce-overhead`)
against eager at 64×64 batch 32, where the host's launches set the pace; the loops' own host
cost a step (the overhead bench: plain, bare Lightning and the pipeline around a model whose
forward costs nothing, on CUDA, where a foreach operation is one multi-tensor kernel and not the
CPU's loop of one dispatch a tensor); a default 64×64 run under torch.profiler (where a small
step's time goes); `model.compile=true` at 224×224. It writes each bench's JSON, the profile's
trace and top operations and gpu-check.json (after every check, so a call cut short keeps what
was done) to $GPU_CHECK_OUT (default docs/; 8 files at most, which a lent machine's $OUT brings
back) and prints each check's outcome as it ends and a
summary naming the card. A check that outlives its time is killed with everything it started.
Without CUDA it prints what it would run and exits 0.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import CHECK_FAILED_EXIT_CODE
from pipeline.gpu_check_install import NEEDED, WANTED, install_command, install_missing, missing
from pipeline.gpu_check_processes import exit_on_stop_signals, process_age_s, run_one
from pipeline.layout import PROFILE_DIR, TOP_OPS_FILE, TRACE_FILE
from pipeline.overrides import override

BENCH = ["-m", "pipeline.bench", "device=gpu", "loss=mse", "bench.features=false",
         "bench.startup=false", "bench.knobs=[]", "bench.rounds=5", "bench.warmup_steps=5"]  # fmt: skip
BIG = ["data.image_size=224", "data.batch_size=256", "precision=bf16-mixed",
       "model.channels_last=true", "bench.steps=30"]  # fmt: skip
SMALL = ["data.image_size=64", "data.batch_size=32", "bench.steps=50"]
# The compile benches: a compiled model against the eager pipeline, plain and naive loops (a
# knob variant), 3 rounds; compiling is in each round's first steps, so the warm-up is longer
# (the first round compiles cold, ~20–40 s on an H200).
COMPILED = ["bench.rounds=3", "bench.warmup_steps=10"]
# Issue 13's host work a step: 10 rounds of 100 steps of each loop around the zero-cost model,
# paired by round (on the 2-core CPU 3 rounds took 17 s with the process's start).
OVERHEAD = ["data.image_size=8", "bench.overhead_steps=100", "bench.rounds=10"]
BENCHES: dict[str, tuple[list[str], int, bool]] = {  # name: overrides, timeout, optional
    "224×224": (BIG, 150, False),
    "64×64": (SMALL, 90, False),
    "64-cuda-graphs": ([*SMALL, 'bench.knobs=["model.compile=reduce-overhead"]', *COMPILED], 150, True),
    "overhead": (OVERHEAD, 100, True),
    "224-compile": ([*BIG, 'bench.knobs=["model.compile=true"]', *COMPILED], 150, True),
}  # fmt: skip
# Where a 64×64 step's time goes: a default run under torch.profiler, 5 steps recorded after 14
# (its trace shows the host's work between kernels and the GPU's idle gaps), kept as
# PROFILE_TRACE (gzipped, ~0.3 MB a CPU step) and PROFILE_TOP_OPS beside the benches' JSON.
PROFILE = ["-m", "pipeline.train", "device=gpu", "loss=mse", "data.image_size=64",
           "data.batch_size=32", "data.num_samples=1024", "trainer.max_steps=20", "profiler=torch",
           "profiler.skip_first=12", "profiler.warmup=2", "profiler.active=5"]  # fmt: skip
PROFILE_TIMEOUT_S = 90
PROFILE_TRACE = "gpu-check-profile-64-trace.json.gz"
PROFILE_TOP_OPS = "gpu-check-profile-64-top-ops.txt"
BUDGET_S = 480  # make gpu-check's 8 minutes, from the process's start, the install included
MARGIN_S = 20  # kept at the end: a killed check's clean-up, the summary, make's own exit
TESTS_TIMEOUT_S = 220  # with the two required benches' 150 + 90 and the margin: the 480
SKIPPED = "skipped: not enough of the 8 minutes left"  # an optional check: fails nothing
NOT_RUN = "not run: no time left"  # a required check: fails the call
BELIEVED_AGE_S = 120  # a process age past this at gpu-check's start is /proc's mistake
# A temporary folder's: the installed packages, the profiled run.
SCRATCH_PREFIX = "pipeline-gpu-check-"


def bench_argv(python: str, overrides: list[str]) -> list[str]:
    """The bench's command: BENCH's overrides, less those `overrides` sets again, then those."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [python, *(o for o in BENCH if o.split("=", 1)[0] not in keys), *overrides]


@dataclass
class Check:
    name: str
    argv: list[str]
    timeout_s: int  # the required checks' add up to BUDGET_S less MARGIN_S
    output: Path | None = None  # the bench's JSON
    optional: bool = False  # run only if its timeout fits in what is left of BUDGET_S
    run_dir: Path | None = None  # a profiled run's: its trace and top operations are kept

    def outputs(self, out_dir: Path) -> list[Path]:
        """The files it leaves in `out_dir` (deleted before it runs: none is stale)."""
        if self.run_dir is not None:
            return [out_dir / PROFILE_TRACE, out_dir / PROFILE_TOP_OPS]
        return [self.output] if self.output is not None else []


def time_left(elapsed_s: float) -> float:
    """Seconds a check may still take, `elapsed_s` into gpu-check."""
    return BUDGET_S - MARGIN_S - elapsed_s


def fits(check: Check, elapsed_s: float) -> bool:
    """Whether `check` runs, `elapsed_s` into gpu-check: a required one while any time is left
    (cut to it); an optional one if it would end in time even at its timeout."""
    left = time_left(elapsed_s)
    return left > 0 if not check.optional else check.timeout_s <= left


def test_workers() -> list[str]:
    """pytest-xdist's options for four processes at a time, where this Python has it (the GPU
    machine's image does; a test run needs it nowhere else): most gpu-marked tests start runs,
    and each run on CUDA compiles the sample kernel (data.compile=auto), 5–40 s apiece, inside
    TESTS_TIMEOUT_S (static review)."""
    return ["-n", "4", "--dist", "worksteal"] if importlib.util.find_spec("xdist") else []


def plan(python: str, out_dir: Path, scratch: Path) -> list[Check]:
    """The checks, in order: the gpu-marked tests, the benches, then the optional ones (run while
    the budget allows): CUDA graphs, the profile (its run in `scratch`), compile at 224×224."""
    tests = [python, "-m", "pytest", "-m", "gpu", "-q", *test_workers(), "tests"]
    checks = [Check("tests marked gpu", tests, TESTS_TIMEOUT_S)]
    for name, (overrides, timeout_s, optional) in BENCHES.items():
        output = out_dir / f"gpu-check-bench-{name.split('×')[0]}.json"
        argv = bench_argv(python, [*overrides, override("bench.output", output)])
        checks.append(Check(f"bench {name}", argv, timeout_s, output, optional))
    run_dir = scratch / "profile-64-run"
    argv = [python, *PROFILE, override("hydra.run.dir", run_dir)]
    profile = Check("profile 64×64", argv, PROFILE_TIMEOUT_S, optional=True, run_dir=run_dir)
    checks.insert(len(checks) - 1, profile)
    return checks


def keep_profile(run_dir: Path, out_dir: Path) -> bool:
    """The profiled run's trace (gzipped) and top operations into `out_dir`, and the run
    directory deleted (its checkpoints are ~90 MB): whether both were there."""
    profile_dir = run_dir / PROFILE_DIR
    trace, top_ops = profile_dir / TRACE_FILE, profile_dir / TOP_OPS_FILE
    kept = trace.is_file() and top_ops.is_file()
    if kept:
        with trace.open("rb") as source, gzip.open(out_dir / PROFILE_TRACE, "wb") as target:
            shutil.copyfileobj(source, target)
        shutil.copyfile(top_ops, out_dir / PROFILE_TOP_OPS)
    shutil.rmtree(run_dir, ignore_errors=True)
    return kept


def bench_summary(name: str, figures: dict[str, Any]) -> str:
    """One line of a bench's figures: images/s and the model's training TFLOP/s at that rate,
    the ratios the issue sets targets for, data; and each knob's (compile) against eager."""
    ips, data = figures["images_per_sec"], figures["data"]
    tflops = figures.get("model_tflops_per_sec", {}).get("pipeline")
    knobs = "".join(
        f"; {variant.removeprefix('pipeline ')} {ips[variant]:.0f} images/s, step time "
        f"{effect:+.1%} vs eager"
        for variant, effect in figures.get("knob_effects", {}).items()
    )
    return (
        f"{name}: pipeline {ips['pipeline']:.0f} images/s"
        f"{'' if tflops is None else f' ({tflops:.1f} model TFLOP/s)'}, plain {ips['plain']:.0f}, naive "
        f"{ips['naive']:.0f}; pipeline/plain {figures['pipeline_over_plain']:.3f}, pipeline/naive "
        f"{figures['pipeline_over_naive']:.3f}; data {data['make_us_per_image']:.1f} µs an image, "
        f"{data['share_of_step']:.2%} of a step; peak {figures['peak_memory_mb']['pipeline'] / 1024:.2f} GB"
        f"{knobs}"
    )


def overhead_summary(name: str, figures: dict[str, Any]) -> str:
    """One line of the overhead bench's figures: each loop's µs a step, and the pipeline's cost
    over bare Lightning paired by round (± its standard error), split into what every step pays
    and what the logging steps add."""
    us = figures["us_per_step"]

    def paired(key: str) -> str:
        se = figures.get(f"{key}_se_us")
        return f"{figures[f'{key}_us']:+.0f}" + ("" if se is None else f" ± {se:.0f}")

    split = (
        f" (every step {paired('every_step_over_lightning_paired')}, the logging steps "
        f"{paired('logging_steps_paired')})"
        if "every_step_over_lightning_paired_us" in figures
        else ""
    )
    return (
        f"{name}: a step of the zero-cost model, plain {us['plain']:.0f} µs, bare Lightning "
        f"{us['lightning']:.0f}, pipeline {us['pipeline']:.0f}; the pipeline over Lightning "
        f"{paired('pipeline_over_lightning_paired')} µs a step{split}"
    )


def outcome_of(check: Check, code: int | None, out_dir: Path) -> tuple[str, str | None]:
    """(outcome, its figures' line) of a check that ran: "passed", "timed out", "exit N", or
    "left no figures" for one that exited 0 without its files."""
    if code is None:
        return "timed out", None
    if code != 0:
        return f"exit {code}", None
    if check.run_dir is not None:
        if not keep_profile(check.run_dir, out_dir):
            return "left no figures", None
        return "passed", f"{out_dir / PROFILE_TOP_OPS}, {out_dir / PROFILE_TRACE}"
    if check.output is None:
        return "passed", None
    try:
        figures = json.loads(check.output.read_text())
        summary = overhead_summary if "us_per_step" in figures else bench_summary
        return "passed", summary(check.name, figures)
    except (OSError, ValueError, KeyError, TypeError):
        return "left no figures", None


def write_results(out_dir: Path, results: dict[str, Any]) -> None:
    """gpu-check.json as it stands (after every check: a call cut short keeps what was done)."""
    path = out_dir / "gpu-check.json"
    try:  # whole or not at all: a signal mid-write left it empty
        path.with_suffix(".json.tmp").write_text(json.dumps(results, indent=2) + "\n")
        os.replace(path.with_suffix(".json.tmp"), path)
    except OSError as exc:
        print(f"gpu-check: cannot write {out_dir / 'gpu-check.json'}: {exc}", flush=True)


def start_results(checks: list[Check], out_dir: Path) -> dict[str, Any]:
    """gpu-check.json before anything runs: every check "pending", and every check's figures
    of an earlier call deleted (none may pass for this one's, whatever stops it)."""
    results: dict[str, Any] = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__}
    results["checks"] = {
        c.name: {"outcome": "pending", "exit": None, "seconds": 0.0} for c in checks
    }
    for check in checks:
        for stale in check.outputs(out_dir):
            stale.unlink(missing_ok=True)
    write_results(out_dir, results)
    return results


def run_checks(checks: list[Check], began: float, out_dir: Path, results: dict[str, Any]) -> int:
    """Each check in turn while the budget allows, its outcome printed and gpu-check.json
    rewritten as it starts ("running": one left so was killed outright) and as it ends
    ("interrupted" for one a stop signal ended); then the summary. The exit code: 0 if every
    required check passed and every optional one that ran."""
    lines: list[str] = []
    for check in checks:
        elapsed = time.monotonic() - began
        code, seconds, figures = None, 0.0, None
        outcome = SKIPPED if check.optional else NOT_RUN
        start = time.monotonic()
        try:
            if fits(check, elapsed):
                print(f"gpu-check: {check.name}: {shlex.join(check.argv)}", flush=True)
                results["checks"][check.name] = {"outcome": "running", "exit": None,
                                                 "seconds": 0.0, "started_s": elapsed}  # fmt: skip
                write_results(out_dir, results)
                code = run_one(check.argv, min(check.timeout_s, time_left(elapsed)))
                seconds = time.monotonic() - start
                outcome, figures = outcome_of(check, code, out_dir)
        except (SystemExit, KeyboardInterrupt):  # a stop signal: recorded, then obeyed
            results["checks"][check.name] = {"outcome": "interrupted", "exit": None,
                                             "seconds": time.monotonic() - start}  # fmt: skip
            write_results(out_dir, results)
            raise
        results["checks"][check.name] = {"outcome": outcome, "exit": code, "seconds": seconds}
        write_results(out_dir, results)
        ran = outcome not in (SKIPPED, NOT_RUN)
        line = f"  {check.name}: {outcome}" + (f" in {seconds:.0f} s" if ran else "")
        lines += [line, *([f"    {figures}"] if figures else [])]
        print("gpu-check:" + line + (f"\n    {figures}" if figures else ""), flush=True)
    print(f"\ngpu-check on {results['card']} (torch {results['torch']}):", *lines, sep="\n")
    passed = all(r["outcome"] in ("passed", SKIPPED) for r in results["checks"].values())
    return 0 if passed else CHECK_FAILED_EXIT_CODE


def writable_problem(out_dir: Path) -> str | None:
    """Why the figures could not be written to `out_dir`, found before anything runs."""
    probe = out_dir / ".gpu-check-probe"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        return f"GPU_CHECK_OUT={out_dir}: cannot write the figures there ({exc.strerror or exc})"
    return None


def main() -> None:
    age = process_age_s()
    began = time.monotonic() - (age if age <= BELIEVED_AGE_S else 0.0)  # else /proc is wrong
    out_dir = Path(os.environ.get("GPU_CHECK_OUT") or "docs").resolve()
    if not torch.cuda.is_available():
        scratch = Path(tempfile.gettempdir(), SCRATCH_PREFIX + "…")
        print("gpu-check: no CUDA device here; on a GPU machine it runs:")
        for dists in (missing(NEEDED), *([d] for d in missing(WANTED))):
            if dists:
                print("  " + shlex.join(install_command(sys.executable, scratch / "site", dists)))
        for check in plan(sys.executable, out_dir, scratch):
            when = f"(if {check.timeout_s} s of the {BUDGET_S} are left) " if check.optional else ""
            print("  " + when + shlex.join(check.argv))
        return
    exit_on_stop_signals()
    problem = writable_problem(out_dir)
    if problem:
        print(f"gpu-check: {problem}", file=sys.stderr)
        sys.exit(CHECK_FAILED_EXIT_CODE)
    with tempfile.TemporaryDirectory(prefix=SCRATCH_PREFIX) as folder:
        scratch = Path(folder)
        checks = plan(sys.executable, out_dir, scratch)
        results = start_results(checks, out_dir)
        problem = install_missing(sys.executable, scratch / "site")
        if problem:
            print(f"gpu-check: {problem}", file=sys.stderr)
            sys.exit(CHECK_FAILED_EXIT_CODE)
        sys.exit(run_checks(checks, began, out_dir, results))


if __name__ == "__main__":
    main()

"""`make gpu-check` (`python -m pipeline.gpu_check`): every check that needs a GPU, in one call.

On a CUDA machine, in under 8 minutes on one H200: installs what a bare GPU machine lacks
(hydra-core, omegaconf, google-crc32c) from wheels carried in wheels/ (`make gpu-wheels` fills
it); runs the tests marked `gpu`; benches 224×224 batch 256 `precision=bf16-mixed
model.channels_last=true loss=mse` (pipeline, plain loop, naive fp32 NCHW loop) and the defaults'
64×64 batch 32; then, while the 8 minutes allow: CUDA graphs (`model.compile=reduce-overhead`)
against eager at 64×64 batch 32, where the host's launches set the pace; a default 64×64 run
under torch.profiler (where a small step's time goes); `model.compile=true` at 224×224. It writes each bench's JSON, the profile's trace and top operations and
gpu-check.json to $GPU_CHECK_OUT (default docs/; 7 files at most, which a lent machine's $OUT
brings back) and prints a summary naming the card. Without CUDA it prints what it would run and
exits 0.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import CHECK_FAILED_EXIT_CODE
from pipeline.layout import PROFILE_DIR, TOP_OPS_FILE, TRACE_FILE
from pipeline.overrides import override

WHEELS = Path("wheels")
# module: distribution, each the pipeline needs and a bare GPU machine may lack, with what they
# need in turn (pip installs into a folder of its own with --no-deps: see install_command).
# google-crc32c is TensorBoard's fast checksum (tensorboard_events), a binary wheel per Python
# version; the GPU machine's image has PyYAML and packaging.
MISSING_ON_BARE_GPU = {
    "hydra": "hydra-core",
    "omegaconf": "omegaconf",
    "antlr4": "antlr4-python3-runtime",  # hydra-core's and omegaconf's parser
    "google_crc32c": "google-crc32c",
    "yaml": "pyyaml",
    "packaging": "packaging",
}
BENCH = ["-m", "pipeline.bench", "device=gpu", "loss=mse", "bench.features=false",
         "bench.startup=false", "bench.knobs=[]", "bench.rounds=5", "bench.warmup_steps=5"]  # fmt: skip
BIG = ["data.image_size=224", "data.batch_size=256", "precision=bf16-mixed",
       "model.channels_last=true", "bench.steps=30"]  # fmt: skip
SMALL = ["data.image_size=64", "data.batch_size=32", "bench.steps=50"]
# The compile benches: a compiled model against the eager pipeline, plain and naive loops (a
# knob variant), 3 rounds; compiling is in each round's first steps, so the warm-up is longer
# (the first round compiles cold, ~20–40 s on an H200).
COMPILED = ["bench.rounds=3", "bench.warmup_steps=10"]
BENCHES: dict[str, tuple[list[str], int, bool]] = {  # name: overrides, timeout, optional
    "224×224": (BIG, 150, False),
    "64×64": (SMALL, 90, False),
    "64-cuda-graphs": ([*SMALL, 'bench.knobs=["model.compile=reduce-overhead"]', *COMPILED], 150, True),
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
BUDGET_S = 480  # make gpu-check's 8 minutes, the install included
SITE_PREFIX = "pipeline-gpu-check-site-"  # the folder the missing packages go to, for the run


def bench_argv(python: str, overrides: list[str]) -> list[str]:
    """The bench's command: BENCH's overrides, less those `overrides` sets again, then those."""
    keys = {o.split("=", 1)[0] for o in overrides}
    return [python, *(o for o in BENCH if o.split("=", 1)[0] not in keys), *overrides]


@dataclass
class Check:
    name: str
    argv: list[str]
    timeout_s: int  # the required checks' budgets add up to 8 minutes
    output: Path | None = None  # the bench's JSON
    optional: bool = False  # run only if its timeout fits in what is left of BUDGET_S
    run_dir: Path | None = None  # a profiled run's: its trace and top operations are kept


def fits(check: Check, elapsed_s: float) -> bool:
    """Whether `check` runs, `elapsed_s` into gpu-check: a required one always; an optional one
    if it would end inside BUDGET_S even at its timeout."""
    return not check.optional or elapsed_s + check.timeout_s <= BUDGET_S


def plan(python: str, out_dir: Path) -> list[Check]:
    """The checks, in order: the gpu-marked tests, the benches, then the optional ones (run while
    the budget allows): CUDA graphs, the profile, compile at 224×224."""
    checks = [Check("tests marked gpu", [python, "-m", "pytest", "-m", "gpu", "-q", "tests"], 240)]
    for name, (overrides, timeout_s, optional) in BENCHES.items():
        output = out_dir / f"gpu-check-bench-{name.split('×')[0]}.json"
        argv = bench_argv(python, [*overrides, override("bench.output", output)])
        checks.append(Check(f"bench {name}", argv, timeout_s, output, optional))
    run_dir = out_dir / "gpu-check-profile-64-run"
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


def install_command(python: str, site: Path) -> list[str] | None:
    """pip's command for what this Python lacks, from the carried wheels, into `site` (a folder
    of its own: a GPU machine's Python environment may not be writable; with --target pip
    ignores what is installed, hence --no-deps and every need named); None if nothing."""
    missing = [dist for module, dist in MISSING_ON_BARE_GPU.items()
               if importlib.util.find_spec(module) is None]  # fmt: skip
    if not missing:
        return None
    return [python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
            "--target", str(site), "--find-links", str(WHEELS), *missing]  # fmt: skip


def install_missing(python: str, site: Path) -> str | None:
    """Install what this Python lacks into `site` and put it on PYTHONPATH for every check's
    process (pytest, the benches, the runs they start); the problem, if that failed."""
    command = install_command(python, site)
    if command is None:
        return None
    if not WHEELS.is_dir():
        return (f"this Python lacks {', '.join(command[command.index(str(WHEELS)) + 1 :])} and "
                f"there is no {WHEELS}/ folder: run `make gpu-wheels` where PyPI is reachable and "
                f"carry {WHEELS}/ with the checkout")  # fmt: skip
    print("gpu-check: " + shlex.join(command), flush=True)
    if subprocess.run(command).returncode != 0:
        return f"installing from {WHEELS}/ failed (above); `make gpu-wheels` fills it"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p
    )
    return None


def bench_summary(name: str, figures: dict[str, Any]) -> str:
    """One line of a bench's figures: images/s and the model's training TFLOP/s at that rate,
    the ratios the issue sets targets for, data."""
    ips, data = figures["images_per_sec"], figures["data"]
    tflops = figures.get("model_tflops_per_sec", {}).get("pipeline")
    return (
        f"{name}: pipeline {ips['pipeline']:.0f} images/s"
        f"{'' if tflops is None else f' ({tflops:.1f} model TFLOP/s)'}, plain {ips['plain']:.0f}, naive "
        f"{ips['naive']:.0f}; pipeline/plain {figures['pipeline_over_plain']:.3f}, pipeline/naive "
        f"{figures['pipeline_over_naive']:.3f}; data {data['make_us_per_image']:.1f} µs an image, "
        f"{data['share_of_step']:.2%} of a step; peak {figures['peak_memory_mb']['pipeline'] / 1024:.2f} GB"
    )


def run_checks(checks: list[Check], began: float, out_dir: Path) -> int:
    """Each check in turn while the budget allows, gpu-check.json and the summary: the exit
    code."""
    card = torch.cuda.get_device_name(0)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"card": card, "torch": torch.__version__, "checks": {}}
    for check in checks:
        if not fits(check, time.perf_counter() - began):
            results["checks"][check.name] = {"exit": None, "seconds": 0.0}
            continue
        print(f"gpu-check: {check.name}: {shlex.join(check.argv)}", flush=True)
        start = time.perf_counter()
        if check.run_dir is not None:
            shutil.rmtree(check.run_dir, ignore_errors=True)  # a run refuses a used directory
        try:
            code = subprocess.run(check.argv, timeout=check.timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = -1
        if check.run_dir is not None and not keep_profile(check.run_dir, out_dir) and code == 0:
            code = CHECK_FAILED_EXIT_CODE  # the run ended well but left no profile
        results["checks"][check.name] = {"exit": code, "seconds": time.perf_counter() - start}
    (out_dir / "gpu-check.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\ngpu-check on {card} (torch {torch.__version__}):")
    for check in checks:
        outcome = results["checks"][check.name]
        status = {
            0: "passed",
            -1: "timed out",
            None: "skipped: not enough of the 8 minutes left",
        }.get(outcome["exit"], f"exit {outcome['exit']}")
        print(f"  {check.name}: {status} in {outcome['seconds']:.0f} s")
        if check.output is not None and outcome["exit"] == 0:
            print("    " + bench_summary(check.name, json.loads(check.output.read_text())))
        if check.run_dir is not None and outcome["exit"] == 0:
            print(f"    {out_dir / PROFILE_TOP_OPS}, {out_dir / PROFILE_TRACE}")
    passed = all(r["exit"] in (0, None) for r in results["checks"].values())
    return 0 if passed else CHECK_FAILED_EXIT_CODE


def main() -> None:
    began = time.perf_counter()
    out_dir = Path(os.environ.get("GPU_CHECK_OUT", "docs")).resolve()
    checks = plan(sys.executable, out_dir)
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; on a GPU machine it runs:")
        install = install_command(sys.executable, Path(tempfile.gettempdir(), SITE_PREFIX + "…"))
        if install:
            print("  " + shlex.join(install))
        for check in checks:
            when = f"(if {check.timeout_s} s of the {BUDGET_S} are left) " if check.optional else ""
            print("  " + when + shlex.join(check.argv))
        return
    with tempfile.TemporaryDirectory(prefix=SITE_PREFIX) as site:
        problem = install_missing(sys.executable, Path(site))
        if problem:
            print(f"gpu-check: {problem}", file=sys.stderr)
            sys.exit(CHECK_FAILED_EXIT_CODE)
        sys.exit(run_checks(checks, began, out_dir))


if __name__ == "__main__":
    main()

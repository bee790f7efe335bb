"""`make gpu-check`: without a GPU it prints what it would run and exits 0."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import run_cli

ROOT = Path(__file__).resolve().parents[2]


def test_without_a_gpu_make_gpu_check_prints_the_plan_and_exits_0() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", GPU_CHECK_OUT="/nonexistent/out")
    result = subprocess.run(["make", "--no-print-directory", "gpu-check", f"PY={sys.executable}"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("-m pipeline.gpu_check")  # make echoes the command
    assert lines[1] == "gpu-check: no CUDA device here; on a GPU machine it runs:"
    assert any("-m pytest -m gpu" in line for line in lines)
    required = [line for line in lines if not line.lstrip().startswith("(if ")]
    (big,) = [line for line in required if "data.image_size=224" in line]
    for override in ("data.batch_size=256", "precision=bf16-mixed", "model.channels_last=true",
                     "loss=mse", "bench.output=/nonexistent/out/gpu-check-bench-224.json"):  # fmt: skip
        assert override in big
    assert any("data.image_size=64 data.batch_size=32" in line for line in required)
    # Then torch.compile against eager, while the 8 minutes allow: CUDA graphs at 64×64.
    optional = [
        line for line in lines if line.lstrip().startswith("(if 150 s of the 480 are left)")
    ]
    assert len(optional) == 2
    assert "data.image_size=64" in optional[0] and "model.compile=reduce-overhead" in optional[0]
    assert "data.image_size=224" in optional[1] and "model.compile=true" in optional[1]
    # and the loops' own host cost a step on CUDA (the zero-cost model's overhead bench)
    assert any(line.lstrip().startswith("(if 100 s of the 480 are left)")
               and "bench.overhead_steps=100" in line for line in lines)  # fmt: skip
    assert not Path("/nonexistent/out").exists()  # a dry run writes nothing


def with_tests_on_path(env: os._Environ[str] | dict[str, str]) -> dict[str, str]:
    """`env` with tests/ first on PYTHONPATH (for bare_gpu_machine)."""
    paths = (str(ROOT / "tests"), env.get("PYTHONPATH"))
    return dict(env, PYTHONPATH=os.pathsep.join(p for p in paths if p))


def test_before_its_install_gpu_check_imports_nothing_a_bare_gpu_machine_lacks() -> None:
    """gpu-check runs in the GPU machine's own Python and installs hydra-core, omegaconf and
    google-crc32c for its checks' processes, not for itself: a module it imported that imports
    omegaconf (pipeline.profiling, for two file names) ended it before any check."""
    env = with_tests_on_path(dict(os.environ, BARE_GPU_MACHINE_BEFORE_INSTALL="1",
                                  CUDA_VISIBLE_DEVICES="", GPU_CHECK_OUT="/nonexistent/out"))  # fmt: skip
    code = "import bare_gpu_machine, runpy; runpy.run_module('pipeline.gpu_check', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    installs = [line for line in result.stdout.splitlines() if " -m pip install " in line]
    assert [line.split(" wheels ")[1] for line in installs] == [
        "hydra-core omegaconf antlr4-python3-runtime", "google-crc32c"
    ]  # fmt: skip


def test_the_gpu_tests_collect_on_a_bare_gpu_machine() -> None:
    """make gpu-check runs `pytest -m gpu tests` there, which imports every test file first. A
    bare GPU machine lacks the extras (bare_gpu_machine hides them here): one test file that
    imported optuna stopped the whole run before any test ("Interrupted: 1 error during
    collection"). Every gpu-marked test collects there as here."""
    env = with_tests_on_path(os.environ)
    hidden = subprocess.run([sys.executable, "-c", "import bare_gpu_machine, importlib.util as u; "
                             "print(u.find_spec('optuna'), u.find_spec('hydra') is not None)"],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert hidden.stdout.split() == ["None", "True"], hidden.stderr
    collect = [sys.executable, "-m", "pytest", "-m", "gpu", "--co", "-q", "-p", "no:cacheprovider"]
    runs = [subprocess.Popen([*collect, *plugin, "tests"], cwd=ROOT, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for plugin in ([], ["-p", "bare_gpu_machine"])]  # fmt: skip
    here, bare = [run.communicate(timeout=240)[0] for run in runs]
    assert runs[0].returncode == 0, here[-3000:]
    assert runs[1].returncode == 0, bare[-3000:]
    tests_here = [line for line in here.splitlines() if "::" in line]
    assert len(tests_here) >= 20
    assert [line for line in bare.splitlines() if "::" in line] == tests_here


def test_the_profiled_run_records_its_steps_and_keeps_trace_and_top_operations(
    tmp_path: Path, torch_home: Path
) -> None:
    """gpu-check's profiled run, on the CPU (the same overrides at 16×16): its schedule ends
    inside the run, and the trace (gzipped) and top operations are kept beside the benches'
    JSON, the run directory (checkpoints) deleted."""
    from pipeline.gpu_check import PROFILE_TOP_OPS, PROFILE_TRACE, keep_profile, plan

    (check,) = [c for c in plan(sys.executable, tmp_path, tmp_path / "scratch") if c.run_dir]
    assert check.run_dir is not None
    args = [{"device=gpu": "device=cpu", "data.image_size=64": "data.image_size=16"}.get(a, a)
            for a in check.argv[3:]]  # fmt: skip
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr[-3000:]
    assert keep_profile(check.run_dir, tmp_path)
    assert not check.run_dir.exists()
    with gzip.open(tmp_path / PROFILE_TRACE, "rt") as trace:
        names = {event.get("name") for event in json.load(trace)["traceEvents"]}
    assert {f"ProfilerStep#{n}" for n in range(14, 19)} <= names  # the 5 recorded steps
    assert "aten::convolution" in (tmp_path / PROFILE_TOP_OPS).read_text()

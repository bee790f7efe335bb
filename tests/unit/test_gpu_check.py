"""`make gpu-check`: without a GPU it prints what it would run and exits 0."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from pipeline import gpu_check
from pipeline.gpu_check import BUDGET_S, bench_summary, fits, install_command, plan


def test_what_a_bare_gpu_machine_lacks_comes_from_the_carried_wheels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    site = Path("/tmp/site")
    assert install_command("python3", site) is None  # everything is installed here
    real = importlib.util.find_spec
    absent = {"hydra", "antlr4"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in absent else real(name)
    )
    assert install_command("python3", site) == [
        "python3", "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
        "--target", "/tmp/site", "--find-links", "wheels", "hydra-core", "antlr4-python3-runtime",
    ]  # fmt: skip


def _wheel(folder: Path, module: str) -> None:
    """A wheel of one module, `module` = 1, as pip builds them (PEP 427)."""
    dist = module.replace("_", "-")
    info = f"{module}-1.0.dist-info"
    files = {
        f"{module}.py": "VALUE = 1\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{module}-1.0-py3-none-any.whl", "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)


def test_the_carried_wheels_install_into_a_folder_every_check_process_imports_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pip installs what is missing into a folder of its own (a GPU machine's environment may be
    read-only) and the checks' processes (pytest, the benches, the runs they start) find it on
    PYTHONPATH."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", "src")
    monkeypatch.setattr(gpu_check, "MISSING_ON_BARE_GPU", {"gpu_check_probe": "gpu-check-probe"})
    site = tmp_path / "site"
    assert gpu_check.install_missing(sys.executable, site) == (
        "this Python lacks gpu-check-probe and there is no wheels/ folder: run `make gpu-wheels` "
        "where PyPI is reachable and carry wheels/ with the checkout"
    )
    (tmp_path / "wheels").mkdir()
    problem = gpu_check.install_missing(sys.executable, site)
    assert problem == "installing from wheels/ failed (above); `make gpu-wheels` fills it"
    assert os.environ["PYTHONPATH"] == "src"
    _wheel(tmp_path / "wheels", "gpu_check_probe")
    assert gpu_check.install_missing(sys.executable, site) is None
    assert os.environ["PYTHONPATH"] == os.pathsep.join([str(site), "src"])
    child = subprocess.run([sys.executable, "-c", "import gpu_check_probe; print(gpu_check_probe.VALUE)"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert child.stdout == "1\n", child.stderr


def test_a_bench_summary_names_the_figures_the_targets_are_about() -> None:
    figures = {
        "images_per_sec": {"pipeline": 10240.4, "plain": 10500.0, "naive": 4100.0},
        "pipeline_over_plain": 0.9753,
        "pipeline_over_naive": 2.4977,
        "data": {"make_us_per_image": 0.41, "share_of_step": 0.0042},
        "peak_memory_mb": {"pipeline": 12288.0},
    }
    assert bench_summary("bench 224×224", figures) == (
        "bench 224×224: pipeline 10240 images/s, plain 10500, naive 4100; pipeline/plain 0.975, "
        "pipeline/naive 2.498; data 0.4 µs an image, 0.42% of a step; peak 12.00 GB"
    )
    figures["model_tflops_per_sec"] = {"pipeline": 111.46}  # 3 × 3.63 GFLOPs × 10240 images/s
    assert bench_summary("bench 224×224", figures).startswith(
        "bench 224×224: pipeline 10240 images/s (111.5 model TFLOP/s), plain 10500, naive 4100;"
    )


def test_the_compile_benches_run_only_where_they_end_inside_the_8_minutes() -> None:
    checks = plan("python3", Path("out"))
    required = [c for c in checks if not c.optional]
    assert sum(c.timeout_s for c in required) <= BUDGET_S == 480
    optional = [c for c in checks if c.optional]
    assert [c.name for c in optional] == [
        "bench 64-cuda-graphs",
        "profile 64×64",
        "bench 224-compile",
    ]
    compile_bench = optional[0]
    assert fits(compile_bench, BUDGET_S - compile_bench.timeout_s)
    assert not fits(compile_bench, BUDGET_S - compile_bench.timeout_s + 1)
    assert all(fits(c, 10 * BUDGET_S) for c in required)  # a required check always runs
    for check in checks[1:]:  # each bench sets a key once: the last of the base's is replaced
        keys = [arg.split("=", 1)[0] for arg in check.argv[3:]]
        assert len(keys) == len(set(keys)), check.name
    assert 'bench.knobs=["model.compile=reduce-overhead"]' in compile_bench.argv
    assert "bench.rounds=3" in compile_bench.argv and "bench.knobs=[]" not in compile_bench.argv


def test_on_a_gpu_machine_the_checks_run_in_order_and_the_compile_benches_wait_for_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loop as a GPU machine runs it, its processes faked: each takes 80 s of a fake clock,
    so after the three required checks (240 s) the CUDA graphs bench (150 s) and the profile
    (90 s) fit in the 480 and the compile bench at 224×224 (150 s) does not; a skipped one fails
    nothing. The profiled run's trace and top operations are kept, its directory deleted."""
    clock = [0.0]
    ran: list[str] = []
    figures = {
        "images_per_sec": {"pipeline": 3000.0, "plain": 3500.0, "naive": 4000.0},
        "pipeline_over_plain": 0.857, "pipeline_over_naive": 0.75,
        "data": {"make_us_per_image": 0.5, "share_of_step": 0.001},
        "peak_memory_mb": {"pipeline": 2048.0},
    }  # fmt: skip

    def fake_run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        clock[0] += 80
        ran.append(" ".join(argv))
        for arg in argv:
            if arg.startswith("bench.output="):
                Path(arg.removeprefix("bench.output=")).write_text(json.dumps(figures))
            if arg.startswith("hydra.run.dir="):  # the profiled run
                profile = Path(arg.removeprefix("hydra.run.dir=")) / "profile"
                profile.mkdir(parents=True)
                (profile / "trace.pt.trace.json").write_text('{"traceEvents": []}')
                (profile / "top_ops.txt").write_text("aten::conv2d\n")
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    monkeypatch.setattr(gpu_check, "install_missing", lambda python, site: None)
    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 0
    assert (
        len(ran) == 5 and "model.compile=reduce-overhead" in ran[3] and "profiler=torch" in ran[4]
    )
    results = json.loads((tmp_path / "gpu-check.json").read_text())
    assert results["card"] == "Fake GPU"
    assert results["checks"]["bench 224-compile"] == {"exit": None, "seconds": 0.0}
    out = capsys.readouterr().out
    assert "bench 64-cuda-graphs: passed in 80 s" in out
    assert "profile 64×64: passed in 80 s" in out
    assert "bench 224-compile: skipped: not enough of the 8 minutes left" in out
    with gzip.open(tmp_path / "gpu-check-profile-64-trace.json.gz", "rt") as trace:
        assert json.load(trace) == {"traceEvents": []}
    assert (tmp_path / "gpu-check-profile-64-top-ops.txt").read_text() == "aten::conv2d\n"
    assert not (tmp_path / "gpu-check-profile-64-run").exists()


@pytest.mark.parametrize("folder", ["a,b", "it's", "x[1]", "a=b", "two words", "naïve"])
def test_each_bench_command_parses_back_to_its_output_in_any_folder(folder: str) -> None:
    """GPU_CHECK_OUT is any folder: a comma, a quote, brackets or '=' in it made a bench.output
    override Hydra could not parse, so every bench failed on the GPU machine, after the tests."""
    from pipeline.cli import compose
    from pipeline.override_checks import compose as compose_with_hydra

    out = Path("/tmp") / folder
    for check in plan("python3", out)[1:]:
        overrides = [o for o in check.argv[3:] if not o.startswith("device=")]
        if check.run_dir is not None:  # the profiled run
            config = compose_with_hydra("train", overrides, with_hydra=True)
            assert (
                config.hydra.run.dir == str(check.run_dir) == str(out / "gpu-check-profile-64-run")
            )
            continue
        assert check.output is not None
        assert compose("bench", overrides).bench.output == str(check.output), check.name

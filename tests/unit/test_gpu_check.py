"""`make gpu-check`: its plan, its 8 minutes, and its loop as a GPU machine runs it (the
processes faked where they would need CUDA; real ones where a process is the point)."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import gpu_check
from pipeline.gpu_check import (
    BUDGET_S,
    MARGIN_S,
    bench_summary,
    fits,
    plan,
    process_age_s,
    run_one,
    writable_problem,
)

SCRATCH = Path("/tmp/scratch")


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
    figures["images_per_sec"]["pipeline model.compile=true"] = 12800.0
    figures["knob_effects"] = {"pipeline model.compile=true": -0.2}
    assert bench_summary("bench 224-compile", figures).endswith(
        "peak 12.00 GB; model.compile=true 12800 images/s, step time -20.0% vs eager"
    )


def test_the_optional_checks_run_only_where_they_end_inside_the_8_minutes() -> None:
    checks = plan("python3", Path("out"), SCRATCH)
    required = [c for c in checks if not c.optional]
    assert sum(c.timeout_s for c in required) + MARGIN_S <= BUDGET_S == 480
    optional = [c for c in checks if c.optional]
    assert [c.name for c in optional] == [
        "bench 64-cuda-graphs",
        "bench overhead",
        "profile 64×64",
        "bench 224-compile",
    ]
    graphs = optional[0]
    last_start = BUDGET_S - MARGIN_S - graphs.timeout_s
    assert fits(graphs, last_start) and not fits(graphs, last_start + 1)
    # A required check runs while any time is left (cut to what is left), then no more.
    assert fits(required[0], BUDGET_S - MARGIN_S - 1) and not fits(required[0], BUDGET_S - MARGIN_S)
    for check in checks[1:]:  # each bench sets a key once: the last of the base's is replaced
        keys = [arg.split("=", 1)[0] for arg in check.argv[3:]]
        assert len(keys) == len(set(keys)), check.name
    assert 'bench.knobs=["model.compile=reduce-overhead"]' in graphs.argv
    assert "bench.rounds=3" in graphs.argv and "bench.knobs=[]" not in graphs.argv
    overhead = optional[1]  # the zero-cost model's loops, one mode of the bench
    assert {"bench.overhead_steps=100", "bench.rounds=10", "data.image_size=8"} <= {*overhead.argv}
    (profile,) = [c for c in checks if c.run_dir is not None]
    assert profile.run_dir == SCRATCH / "profile-64-run"  # not in the folder that is sent back


OVERHEAD_FIGURES = {
    "us_per_step": {"plain": 2100.4, "lightning": 2400.0, "pipeline": 2461.0},
    "pipeline_over_lightning_paired_us": 58.3, "pipeline_over_lightning_paired_se_us": 12.1,
    "every_step_over_lightning_paired_us": 20.4, "every_step_over_lightning_paired_se_us": 9.6,
    "logging_steps_paired_us": 37.9, "logging_steps_paired_se_us": 11.0,
}  # fmt: skip


def test_the_overhead_summary_names_the_paired_figures() -> None:
    assert gpu_check.overhead_summary("bench overhead", OVERHEAD_FIGURES) == (
        "bench overhead: a step of the zero-cost model, plain 2100 µs, bare Lightning 2400, "
        "pipeline 2461; the pipeline over Lightning +58 ± 12 µs a step (every step +20 ± 10, "
        "the logging steps +38 ± 11)"
    )
    one_round = {k: v for k, v in OVERHEAD_FIGURES.items() if k.startswith(("us", "pipeline"))}
    one_round["pipeline_over_lightning_paired_se_us"] = None
    assert gpu_check.overhead_summary("bench overhead", one_round).endswith(
        "the pipeline over Lightning +58 µs a step"
    )


FIGURES = {
    "images_per_sec": {"pipeline": 3000.0, "plain": 3500.0, "naive": 4000.0},
    "pipeline_over_plain": 0.857, "pipeline_over_naive": 0.75,
    "data": {"make_us_per_image": 0.5, "share_of_step": 0.001},
    "peak_memory_mb": {"pipeline": 2048.0},
}  # fmt: skip


def fake_gpu_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, each_s: float,
                     age_s: float = 0.0, no_figures: str = "") -> list[str]:  # fmt: skip
    """gpu_check.main as a GPU machine runs it, every check a fake process of `each_s` seconds of
    a fake clock that writes what the real one would (except the bench `no_figures` names);
    the process `age_s` old at main's start. The commands run, in order."""
    clock = [1000.0]
    ran: list[str] = []

    def fake_run_one(argv: list[str], timeout_s: float) -> int | None:
        clock[0] += each_s
        ran.append(" ".join(argv))
        for arg in argv:
            if arg.startswith("bench.output=") and not (no_figures and no_figures in arg):
                figures = OVERHEAD_FIGURES if "bench.overhead_steps=100" in argv else FIGURES
                Path(arg.removeprefix("bench.output=")).write_text(json.dumps(figures))
            if arg.startswith("hydra.run.dir="):  # the profiled run
                profile = Path(arg.removeprefix("hydra.run.dir=")) / "profile"
                profile.mkdir(parents=True)
                (profile / "trace.pt.trace.json").write_text('{"traceEvents": []}')
                (profile / "top_ops.txt").write_text("aten::conv2d\n")
        return 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    monkeypatch.setattr(gpu_check, "install_missing", lambda python, site: None)
    monkeypatch.setattr(gpu_check, "run_one", fake_run_one)
    monkeypatch.setattr(gpu_check, "process_age_s", lambda: age_s)
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path))
    monkeypatch.setattr(signal, "signal", lambda signum, handler: None)  # not this process's
    return ran


def test_on_a_gpu_machine_the_checks_run_in_order_and_the_optional_ones_wait_for_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each check takes 70 s: after the three required (210 s) the CUDA graphs bench (150 s),
    the overhead bench (100 s) and the profile (90 s) end inside the 460 and the compile bench at
    224×224 (150 s) would not; a skipped one fails nothing and leaves no stale figures. The
    profiled run's trace and top operations are kept beside the benches' JSON."""
    ran = fake_gpu_machine(monkeypatch, tmp_path, each_s=70)
    stale = tmp_path / "gpu-check-bench-224-compile.json"
    stale.write_text("{}")  # an earlier gpu-check's
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 0
    assert len(ran) == 6 and "model.compile=reduce-overhead" in ran[3]
    assert "bench.overhead_steps=100" in ran[4] and "profiler=torch" in ran[5]
    results = json.loads((tmp_path / "gpu-check.json").read_text())
    assert results["card"] == "Fake GPU"
    assert results["checks"]["bench 224-compile"] == {
        "outcome": "skipped: not enough of the 8 minutes left", "exit": None, "seconds": 0.0
    }  # fmt: skip
    assert results["checks"]["profile 64×64"] == {"outcome": "passed", "exit": 0, "seconds": 70}
    assert not stale.exists()
    out = capsys.readouterr().out
    assert "gpu-check:  bench 224×224: passed in 70 s\n    bench 224×224: pipeline 3000" in out
    assert "  bench 64-cuda-graphs: passed in 70 s" in out
    assert "  bench overhead: passed in 70 s\n    bench overhead: a step of the zero-cost" in out
    assert "  profile 64×64: passed in 70 s" in out
    assert "  bench 224-compile: skipped: not enough of the 8 minutes left" in out
    with gzip.open(tmp_path / "gpu-check-profile-64-trace.json.gz", "rt") as trace:
        assert json.load(trace) == {"traceEvents": []}
    assert (tmp_path / "gpu-check-profile-64-top-ops.txt").read_text() == "aten::conv2d\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "gpu-check-bench-224.json",
        "gpu-check-bench-64-cuda-graphs.json",
        "gpu-check-bench-64.json",
        "gpu-check-bench-overhead.json",
        "gpu-check-profile-64-top-ops.txt",
        "gpu-check-profile-64-trace.json.gz",
        "gpu-check.json",
    ]  # fmt: skip  (8 files at most come back from a lent machine: 7 here)


def test_the_8_minutes_count_from_the_process_start_and_a_bench_without_figures_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Importing torch took seconds before the clock started. Here the process is 100 s old at
    main's start and each check takes 95 s: after the required checks (285 s) 75 s are left,
    too few for any optional one. A bench that exits 0 without its JSON is a failure, not a crash of the summary."""
    ran = fake_gpu_machine(monkeypatch, tmp_path, each_s=95, age_s=100, no_figures="bench-64.json")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 1 and len(ran) == 3
    results = json.loads((tmp_path / "gpu-check.json").read_text())
    assert results["checks"]["bench 64×64"]["outcome"] == "left no figures"
    assert "  bench 64×64: left no figures in 95 s" in capsys.readouterr().out


def test_a_required_check_without_time_fails_the_call_and_a_wrong_age_is_not_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each check takes 200 s: the tests end at 300 s into the call (the process 100 s old at
    main's start), the 224×224 bench gets the 160 s left and the 64×64 bench none: the call
    fails (it exited 0 with its required checks skipped). A process age of days is /proc's
    mistake, not believed."""
    ran = fake_gpu_machine(monkeypatch, tmp_path, each_s=200, age_s=100)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 1 and len(ran) == 2
    checks = json.loads((tmp_path / "gpu-check.json").read_text())["checks"]
    assert checks["bench 64×64"]["outcome"] == "not run: no time left"
    ran = fake_gpu_machine(monkeypatch, tmp_path, each_s=80, age_s=86400.0)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 0 and len(ran) == 5


def test_a_call_cut_short_says_so_and_keeps_no_earlier_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop signal in the second check (SystemExit from gpu-check's handler): the first's
    outcome, "interrupted", then "pending"; an earlier call's figures are gone from the start."""
    fake_gpu_machine(monkeypatch, tmp_path, each_s=10)
    earlier = [tmp_path / "gpu-check-bench-64.json", tmp_path / "gpu-check-profile-64-top-ops.txt"]
    for path in earlier:
        path.write_text("an earlier call's")
    calls = [0]
    seen: list[str] = []

    def stopped_in_the_second(argv: list[str], timeout_s: float) -> int | None:
        calls[0] += 1
        if calls[0] == 2:  # what a SIGKILL now would leave: this check "running"
            checks = json.loads((tmp_path / "gpu-check.json").read_text())["checks"]
            seen.extend(c["outcome"] for c in checks.values())
            raise SystemExit(143)
        return 0

    monkeypatch.setattr(gpu_check, "run_one", stopped_in_the_second)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 143
    checks = json.loads((tmp_path / "gpu-check.json").read_text())["checks"]
    assert [c["outcome"] for c in checks.values()] == [
        "passed", "interrupted", "pending", "pending", "pending", "pending", "pending"
    ]  # fmt: skip
    assert not any(path.exists() for path in earlier)
    assert seen == ["passed", "running", "pending", "pending", "pending", "pending", "pending"]


def test_a_failed_install_leaves_no_earlier_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_gpu_machine(monkeypatch, tmp_path, each_s=10)
    earlier = tmp_path / "gpu-check-bench-224.json"
    earlier.write_text("an earlier call's")
    monkeypatch.setattr(gpu_check, "install_missing", lambda python, site: "no wheels")
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main()
    assert exit_info.value.code == 1 and not earlier.exists()
    checks = json.loads((tmp_path / "gpu-check.json").read_text())["checks"]
    assert {c["outcome"] for c in checks.values()} == {"pending"}


def test_a_check_dies_with_gpu_check(tmp_path: Path) -> None:
    """gpu-check killed outright (SIGKILL: no handler runs) took nothing of its check down: the
    check runs in a process group of its own. Linux's parent-death signal kills it."""
    pid_file = tmp_path / "check"
    check = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    driver = f"import sys; from pipeline import gpu_check; gpu_check.run_one([sys.executable, '-c', {check!r}], 120)"
    proc = _started(pid_file, driver)
    proc.kill()
    proc.wait(timeout=30)
    assert _gone(int(pid_file.read_text()))


def test_a_folder_the_figures_cannot_go_to_is_one_line_before_anything_runs(
    tmp_path: Path,
) -> None:
    (tmp_path / "a-file").write_text("")
    problem = writable_problem(tmp_path / "a-file" / "out")
    assert problem is not None and problem.startswith(
        f"GPU_CHECK_OUT={tmp_path / 'a-file' / 'out'}: cannot write the figures there ("
    )
    assert writable_problem(tmp_path / "new" / "out") is None
    assert list((tmp_path / "new" / "out").iterdir()) == []


def _started(pid_file: Path, code: str) -> subprocess.Popen[str]:
    """A Python process running `code` once it has written its child's pid to `pid_file`."""
    proc = subprocess.Popen([sys.executable, "-c", code], text=True)
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    return proc


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped, counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _starts_a_sleep(pid_file: Path) -> str:
    """Python code that starts a `sleep 60` of its own, writes its pid to `pid_file`, and
    sleeps: a check that leaves a process running."""
    return (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")  # fmt: skip


def _gone(pid: int, within_s: float = 10) -> bool:
    """Whether `pid` ends within `within_s` (a SIGKILL to a group is delivered to each of its
    processes in its own time: only the direct child is waited for)."""
    deadline = time.monotonic() + within_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_check_that_outlives_its_time_is_killed_with_what_it_started(tmp_path: Path) -> None:
    """A timed-out `pytest -m gpu` left its runs holding the GPU through the next checks."""
    pid_file = tmp_path / "grandchild"
    start = time.monotonic()
    assert run_one([sys.executable, "-c", _starts_a_sleep(pid_file)], timeout_s=3) is None
    assert time.monotonic() - start < 30
    assert _gone(int(pid_file.read_text()))
    assert run_one([sys.executable, "-c", "raise SystemExit(7)"], timeout_s=30) == 7


def test_a_stop_of_gpu_check_ends_the_check_in_flight_with_what_it_started(
    tmp_path: Path,
) -> None:
    """SIGTERM (the device call's limit) to gpu-check: the check's process group is killed, not
    left running on the GPU in a group of its own."""
    pid_file = tmp_path / "grandchild"
    check = _starts_a_sleep(pid_file)
    driver = ("import sys; from pipeline import gpu_check; gpu_check.exit_on_stop_signals(); "
              f"gpu_check.run_one([sys.executable, '-c', {check!r}], 120)")  # fmt: skip
    proc = _started(pid_file, driver)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert _gone(int(pid_file.read_text()))


def test_the_process_age_counts_the_imports() -> None:
    code = "import time; time.sleep(1); from pipeline.gpu_check import process_age_s; print(process_age_s())"
    age = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               timeout=120, check=True).stdout)  # fmt: skip
    assert 1.0 <= age < 120
    assert 0 < process_age_s() < time.monotonic()


@pytest.mark.parametrize(
    "folder", ["a,b", "it's", "x[1]", "a=b", "two words", "naïve", "a${x}b", "back\\slash"]
)
def test_each_command_parses_back_to_its_output_in_any_folder(folder: str) -> None:
    """GPU_CHECK_OUT is any folder: a comma, a quote, brackets or '=' in it made a bench.output
    override Hydra could not parse, so every bench failed on the GPU machine, after the tests;
    and `${` an interpolation."""
    from pipeline.cli import compose
    from pipeline.override_checks import compose as compose_with_hydra

    out = Path("/tmp") / folder
    for check in plan("python3", out, out / "scratch")[1:]:
        overrides = [o for o in check.argv[3:] if not o.startswith("device=")]
        if check.run_dir is not None:  # the profiled run
            config = compose_with_hydra("train", overrides, with_hydra=True)
            assert (
                config.hydra.run.dir
                == str(check.run_dir)
                == str(out / "scratch" / "profile-64-run")
            )
            continue
        assert check.output is not None
        assert compose("bench", overrides).bench.output == str(check.output), check.name


def test_an_empty_gpu_check_out_is_docs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("GPU_CHECK_OUT", "")
    gpu_check.main()
    assert (
        f"bench.output={Path('docs').resolve() / 'gpu-check-bench-224.json'}"
        in capsys.readouterr().out
    )
    assert os.environ["GPU_CHECK_OUT"] == ""

"""Hostile and careless use through the real CLI: nothing lost, nothing crashes (issue 11).

Each test runs `python -m pipeline.train` (or eval) as a subprocess on real files, and fails
on the code before these fixes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from helpers import TINY, cli_env, only_run_dir, run_cli, start_cli

pytestmark = pytest.mark.e2e
SHORT = [*TINY, "callbacks=minimal", "logger=none"]


def problems_of(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The one-line problems of an exit-2 run; fails on a traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return [line[4:] for line in result.stderr.splitlines() if line.startswith("  - ")]


def hydra_files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / ".hydra").iterdir())}


def test_a_resume_that_does_not_fit_is_refused_and_leaves_the_run_untouched(
    tmp_path: Path, torch_home: Path
) -> None:
    assert (
        run_cli("pipeline.train", [*SHORT, "model.num_classes=10"], tmp_path, torch_home).returncode
        == 0
    )
    run_dir = only_run_dir(tmp_path)
    before = hydra_files(run_dir)
    resume = f"resume={run_dir}"
    result = run_cli(
        "pipeline.train", [resume, "model.num_classes=1000", "optimizer=adam"], tmp_path, torch_home
    )
    [shapes, optimizer, finished] = problems_of(result)
    assert (
        "does not fit model.num_classes=1000" in shapes
        and "fc.weight (10, 512) vs (1000, 512)" in shapes
    )
    assert "torch.optim.SGD, not torch.optim.Adam" in optimizer
    # The run took its 2 steps: a resume with no more to take trained nothing and said nothing.
    assert finished.endswith(
        "is at step 2 and trainer.max_steps=2: there is nothing left to train; to train on, give "
        "the run more steps, e.g. trainer.max_steps=4"
    )
    assert hydra_files(run_dir) == before
    result = run_cli("pipeline.train", [resume, "trainer.max_steps=3"], tmp_path, torch_home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert b"trainer.max_steps=3" in hydra_files(run_dir)["overrides.yaml"]


def test_a_directory_that_holds_a_run_is_claimed_by_one_live_process(
    tmp_path: Path, torch_home: Path
) -> None:
    pinned = tmp_path / "pinned"
    args = [*SHORT, f"hydra.run.dir={pinned}"]
    assert run_cli("pipeline.train", args, tmp_path, torch_home).returncode == 0
    ckpt = (pinned / "checkpoints" / "last.ckpt").read_bytes()
    [again] = problems_of(run_cli("pipeline.train", args, tmp_path, torch_home))
    assert "already holds a run; continue it with resume=" in again
    assert (pinned / "checkpoints" / "last.ckpt").read_bytes() == ckpt
    # A live holder (a process that claimed it and sleeps) keeps a resume out; once it is
    # killed with SIGKILL, nothing holds the directory any more.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from pipeline.rundir import lock_run_dir; from pathlib import Path; "
         f"lock_run_dir(Path({str(pinned)!r})); print('held', flush=True); import time; time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, env=cli_env(torch_home),
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        more = [f"resume={pinned}", "trainer.max_steps=3"]
        [busy] = problems_of(run_cli("pipeline.train", more, tmp_path, torch_home))
        assert f"is in use by another live process (pid {holder.pid})" in busy
    finally:
        holder.kill()
        holder.wait()
    result = run_cli("pipeline.train", more, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr[-2000:]


def test_slurm_requeue_reuses_its_pinned_run_directory(tmp_path: Path, torch_home: Path) -> None:
    pinned = tmp_path / "slurm-1234"
    args = [*SHORT, f"hydra.run.dir={pinned}"]
    assert run_cli("pipeline.train", args, tmp_path, torch_home).returncode == 0
    env = cli_env(torch_home) | {"SLURM_RESTART_COUNT": "1", "SLURM_PROCID": "0"}
    result = run_cli("pipeline.train", args, tmp_path, torch_home, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_rank_its_launch_does_not_have_is_one_line_and_no_run_directory(
    tmp_path: Path, torch_home: Path
) -> None:
    """SLURM_PROCID=1 with SLURM_NTASKS=1 (a copied job script's environment): Lightning took the
    process for rank 1 of 1; it trained with no TensorBoard writer and died with an
    AttributeError at its first logged step."""
    env = cli_env(torch_home) | {"SLURM_PROCID": "1", "SLURM_NTASKS": "1"}
    [problem] = problems_of(run_cli("pipeline.train", SHORT, tmp_path, torch_home, env=env))
    assert problem.startswith("SLURM_PROCID=1 is not below SLURM_NTASKS=1 (ranks count from 0)")
    assert not (tmp_path / "outputs").exists()


def test_a_kill_mid_epoch_loses_at_most_the_timed_checkpoint_interval(
    tmp_path: Path, torch_home: Path
) -> None:
    """500-step epochs; last.ckpt every 0.02 min (1.2 s); SIGKILL once one exists; resume."""
    args = [
        "loss=mse", "data.image_size=32", "data.batch_size=2", "data.num_samples=1000",
        "trainer.max_steps=1000", "callbacks=minimal", "logger=none",
        "callbacks.checkpoint.every_n_minutes=0.02",
    ]  # fmt: skip
    proc = start_cli("pipeline.train", args, tmp_path, torch_home)
    try:
        deadline = time.monotonic() + 180
        while not list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    run_dir = only_run_dir(tmp_path)
    step = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 500  # saved mid-epoch, by time
    result = run_cli(
        "pipeline.train",
        [f"resume={run_dir}", f"trainer.max_steps={step + 2}"],
        tmp_path,
        torch_home,
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again_there(
    tmp_path: Path, torch_home: Path
) -> None:
    """It said "start it again without resume=", and the same hydra.run.dir was then refused
    as holding a run: a dead end (hostile review). It now starts again there, with the
    run's own overrides."""
    run_dir = tmp_path / "outputs" / "d" / "t"
    (run_dir / ".hydra").mkdir(parents=True)
    saved = "".join(f"- {o}\n" for o in [*SHORT, "loss=mse", "trainer.max_steps=2"])
    (run_dir / ".hydra" / "overrides.yaml").write_text(saved)
    again = run_cli("pipeline.train", [f"resume={run_dir}"], tmp_path, torch_home)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resume={run_dir}: the run saved no checkpoint, so it starts again in that " in (
        again.stdout
    )
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 2
    assert "- loss=mse" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    step_file = run_dir / "checkpoints" / "step-000001.ckpt"  # a kill between it and last.ckpt
    (run_dir / "checkpoints" / "last.ckpt").rename(step_file)
    [problem] = problems_of(run_cli("pipeline.train", [f"resume={run_dir}"], tmp_path, torch_home))
    assert problem.endswith("has step checkpoints but no checkpoints/last.ckpt; continue from "
                            "one of them with ckpt_path=<it> hydra.run.dir=<a new folder>")  # fmt: skip


def caught_signals(pid: int) -> int:
    """The process's mask of signals it has handlers for (/proc/<pid>/status, SigCgt)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )


@pytest.mark.parametrize(
    ("command", "signals"),
    [
        ("python -m", [signal.SIGINT]),
        ("python -m", [signal.SIGTERM]),
        ("python -m", [signal.SIGINT, signal.SIGINT]),
        ("pipeline-train", [signal.SIGINT]),
    ],
)
def test_a_stop_signal_while_it_imports_stops_it_with_one_line_and_writes_nothing(
    tmp_path: Path, torch_home: Path, command: str, signals: list[int]
) -> None:
    """Before training no GracefulStop listened: a Ctrl-C was a traceback from wherever the
    program was, or (in a finalizer, or with SIGINT ignored as a shell's background job has it)
    nothing at all: the run trained to its end (hostile review). Sent once the handler is in
    (its SIGTERM bit in SigCgt), while torch and Lightning import (seconds); by the console
    script too, and twice (a traceback from the import the second one cut, it was)."""
    script = Path(sys.executable).parent / "pipeline-train"
    argv = (
        [str(script)] if command == "pipeline-train" else [sys.executable, "-m", "pipeline.train"]
    )
    proc = subprocess.Popen([*argv, *SHORT], cwd=tmp_path, env=cli_env(torch_home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 30
    while not caught_signals(proc.pid) & (1 << (signal.SIGTERM - 1)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    for signum in signals:
        proc.send_signal(signum)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signals[0], err[-2000:]
    name = signal.Signals(signals[0]).name
    again = " (Ctrl-C again to stop at once)" if signals[0] == signal.SIGINT else ""
    how = "stopped at once by a second Ctrl-C" if len(signals) == 2 else f"stopped by {name}"
    assert err.splitlines() == [
        f"pipeline.train: {name} received{again}",
        f"pipeline.train: {how} before training started",
    ]
    assert not (tmp_path / "outputs").exists()


def test_numbers_out_of_any_range_and_bad_trainer_values_are_one_line_each(
    tmp_path: Path, torch_home: Path
) -> None:
    args = [
        *SHORT, "optimizer.lr=nan", "optimizer.weight_decay=inf", "seed=99999999999999999999999",
        "trainer.max_time=bogus", "+foo=bar",
    ]  # fmt: skip
    problems = problems_of(run_cli("pipeline.train", args, tmp_path, torch_home))
    assert any(p.startswith("foo is not a config key (got +foo=bar)") for p in problems), problems
    problems = problems_of(run_cli("pipeline.train", args[:-1], tmp_path, torch_home))
    assert len(problems) == 4, problems
    assert any(p.startswith("optimizer.lr must be a finite number (got nan)") for p in problems)
    assert any(
        p.startswith("optimizer.weight_decay must be a finite number (got inf)") for p in problems
    )
    assert any(p.startswith("seed must be in [0, 4294967295]") for p in problems)
    assert any(
        p.startswith("trainer.max_time=bogus is refused by lightning.Trainer") for p in problems
    )
    assert not (tmp_path / "outputs").exists()


def test_a_last_batch_too_small_and_a_step_too_big_for_memory_are_refused(
    tmp_path: Path, torch_home: Path
) -> None:
    small = ["data.num_samples=17", "data.batch_size=4", "data.image_size=32"]
    [last] = problems_of(run_cli("pipeline.train", [*SHORT, *small], tmp_path, torch_home))
    assert "leaves a last batch of 1 sample(s)" in last and "set data.num_samples=16" in last
    big = ["data.image_size=4096", "data.batch_size=64"]
    [memory] = problems_of(run_cli("pipeline.train", [*SHORT, *big], tmp_path, torch_home))
    assert "needs at least" in memory and "GiB of activations a step" in memory
    assert "lower data.batch_size or data.image_size" in memory


def test_the_guard_never_saves_weights_it_has_not_checked(tmp_path: Path, torch_home: Path) -> None:
    """lr=1e38 makes the weights inf in the first optimizer step, while the loss and the
    gradients of that step were finite: no checkpoint is better than a poisoned one."""
    args = [*TINY, "trainer.max_steps=4", "optimizer.lr=1e38", "callbacks=minimal"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 3, result.stderr[-2000:]
    assert (
        "made the weights non-finite" in result.stderr
        and "no checkpoint was saved" in result.stderr
    )
    assert not (only_run_dir(tmp_path) / "checkpoints" / "last.ckpt").exists()
    assert result.stderr.count("made the weights non-finite") == 1  # once, not also as a log line
    log = (only_run_dir(tmp_path) / "train.log").read_text()
    assert "first training batch took" in log and "compiling is part of it" not in log


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A real file system at `mount` (tmpfs, with mount's `options`: size=40m, ro), unmounted
    after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 40 MiB file system (tmpfs): too small for two ResNet18 checkpoints with momentum."""
    with tmpfs(tmp_path / "small_disk", "size=40m") as mount:
        yield mount


def test_a_disk_too_small_for_checkpoints_is_refused_before_training(
    tmp_path: Path, torch_home: Path, small_disk: Path
) -> None:
    run_dir = small_disk / "run"
    [problem] = problems_of(
        run_cli("pipeline.train", [*SHORT, f"hydra.run.dir={run_dir}"], tmp_path, torch_home)
    )
    assert "MiB free, and checkpoints need" in problem
    assert not run_dir.exists()  # nothing left behind


def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_file(
    small_disk: Path,
) -> None:
    from pipeline.checkpoint_io import AtomicCheckpointIO
    from pipeline.errors import ResourceError

    target = small_disk / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(10)}, target)
    with pytest.raises(
        ResourceError, match=r"No space left on device.*the previous one is unchanged"
    ):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(20 * 2**20)}, target)  # 80 MB
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.ones(10))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize(
    ("options", "why"),
    [("size=300k", "No space left on device"), ("ro,size=1m", "Read-only file system")],
)
def test_an_event_file_that_cannot_be_written_ends_the_run_with_one_line(
    tmp_path: Path, torch_home: Path, options: str, why: str
) -> None:
    """TensorBoard's folder on a 300 KiB disk, histograms every 2 steps: it fills within a few
    steps. That was a ~115-line traceback with exit 1 (TensorBoard's writer thread's OSError);
    a read-only folder, one of ~120 lines as the event file was created (hostile reviews)."""
    run_dir = tmp_path / "run"
    args = [*TINY, "callbacks.progress_bar=false", "logger=tensorboard", "loss=mse",
            "trainer.max_steps=40", "callbacks.gradients.histogram_every_n_steps=2",
            f"hydra.run.dir={run_dir}"]  # fmt: skip
    with tmpfs(run_dir / "tensorboard", options):
        result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 6, result.stderr[-3000:]
    [problem] = result.stderr.strip().splitlines()
    assert f"cannot write TensorBoard's event file in {run_dir / 'tensorboard'} ({why})" in problem
    assert "hydra.run.dir=" in problem


def test_a_real_allocation_failure_is_recognised() -> None:
    from pipeline.errors import is_out_of_memory

    try:
        torch.empty(2**62, dtype=torch.uint8)
    except RuntimeError as exc:
        assert is_out_of_memory(exc)
    assert not is_out_of_memory(RuntimeError("Expected more than 1 value per channel"))


def test_paths_with_spaces_and_accents_train_resume_and_print_quoted(
    tmp_path: Path, torch_home: Path
) -> None:
    run_dir = tmp_path / "my runs" / "première"
    args = [*SHORT, "logger=tensorboard", f"hydra.run.dir='{run_dir}'"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'tensorboard --logdir "{run_dir}"' in result.stdout.replace("\n", "")
    result = run_cli(  # in Hydra's quotes, as hydra.run.dir takes it
        "pipeline.train", [f"resume='{run_dir}'", "trainer.max_steps=3"], tmp_path, torch_home
    )
    assert result.returncode == 0, result.stderr[-2000:]
    unquoted = run_cli("pipeline.train", [*SHORT, f"hydra.run.dir={run_dir}"], tmp_path, torch_home)
    [hint] = problems_of(unquoted)
    assert f"quote the value: \"hydra.run.dir='{run_dir}'\"" in hint
    split = run_cli("pipeline.train", ["resume=my", "run"], tmp_path, torch_home)
    assert problems_of(split) == [
        "'run' is not KEY=VALUE; a value with spaces must be quoted as one argument: 'resume=my run'"
    ]


def test_every_sweep_syntax_runs_or_is_one_line(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli(
        "pipeline.train",
        ["-m", "optimizer=glob(ad*)", *SHORT, "trainer.max_steps=1"],
        tmp_path,
        torch_home,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(p.name for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert [j.split("_", 1)[0] for j in jobs] == ["0", "1"] and "optimizer=adamw" in jobs[1]
    for sweep, expected in [
        ("optimizer=glob(zz*)", "matches no option of optimizer"),
        ("optimizer.lr=glob(*)", "glob() chooses among a config group's options"),
        ("optimizer.lr=interval(0.1,1)", "interval() is a range only a search sweeper draws from"),
    ]:
        [problem] = problems_of(
            run_cli("pipeline.train", ["-m", sweep, *SHORT], tmp_path, torch_home)
        )
        assert expected in problem, problem


def test_removing_a_needed_group_says_so(tmp_path: Path, torch_home: Path) -> None:
    [problem] = problems_of(run_cli("pipeline.train", ["~optimizer", *SHORT], tmp_path, torch_home))
    assert problem.startswith("~optimizer removes the optimizer group, which every run needs")


def test_eval_takes_trains_overrides_over_the_checkpoint_and_validates_them(
    tmp_path: Path, torch_home: Path
) -> None:
    assert run_cli("pipeline.train", SHORT, tmp_path, torch_home).returncode == 0
    ckpt = f"ckpt_path={only_run_dir(tmp_path) / 'checkpoints' / 'last.ckpt'}"
    result = run_cli(
        "pipeline.eval",
        [ckpt, "data.batch_size=2", "trainer.limit_val_batches=1", "logger=none",
         "precision=16-mixed"],
        tmp_path,
        torch_home,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val/loss" in result.stdout
    assert "Warning" not in result.stderr, result.stderr  # Lightning's own named its file (review)
    assert "precision=16-mixed scores in bf16-mixed on a CPU" in result.stdout
    assert "AMP with fp16 is not supported" not in result.stderr  # Lightning's, with its path
    # The training config's keys and groups: Hydra's own message asked for +optimizer=adam, or
    # called model.weights a misspelling.
    taken = ["optimizer.lr=1", "optimizer=adam", "loss=mse", "model.weights=DEFAULT"]
    problems = problems_of(run_cli("pipeline.eval", [ckpt, *taken], tmp_path, torch_home))
    training = "a training setting: give it to pipeline.train, or to a resume: resume=<run dir>"
    model = "to change the model, train a new run"
    assert problems == [
        f"{key} comes from the checkpoint; pipeline.eval takes only data.*, precision=, trainer.*, "
        f"device= and logger= ({why})"
        for key, why in (("optimizer.lr", training), ("optimizer", training), ("loss", model),
                         ("model.weights", model))
    ]  # fmt: skip
    # The model's stem takes the checkpoint's channels: a traceback of load_state_dict before.
    [channels] = problems_of(
        run_cli("pipeline.eval", [ckpt, "data.channels=1"], tmp_path, torch_home)
    )
    assert channels == (
        "data.channels comes from the checkpoint (it was trained with data.channels=3); drop "
        "data.channels=1 (for other channels, train a new run from its weights: model.weights=<ckpt>)"
    )
    [resume] = problems_of(run_cli("pipeline.eval", ["resume=latest"], tmp_path, torch_home))
    assert resume.startswith("resume= continues a training run; pipeline.eval takes a checkpoint")
    [typo] = problems_of(run_cli("pipeline.eval", [ckpt, "optimzer.lr=1"], tmp_path, torch_home))
    assert typo.startswith("optimzer.lr is not a config key") and "data, device" in typo
    problems = problems_of(
        run_cli(
            "pipeline.eval", [ckpt, "data.batch_size=0", "precision=bogus"], tmp_path, torch_home
        )
    )
    assert any(p.startswith("data.batch_size must be ≥ 1") for p in problems), problems
    assert any(p.startswith("precision must be one of") for p in problems), problems
    if not torch.cuda.is_available():
        [gpu] = problems_of(run_cli("pipeline.eval", [ckpt, "device=gpu"], tmp_path, torch_home))
        assert gpu.startswith("device=gpu needs a CUDA GPU")
    # A key this command removes: "set data.batch_size=32" (Hydra refuses it after the ~), and
    # a traceback for ~device.accelerator (review).
    removed = ["~data.batch_size", "~device.accelerator"]
    assert problems_of(run_cli("pipeline.eval", [ckpt, *removed], tmp_path, torch_home)) == [
        f"{key[1:]} is missing, and the run needs it; drop the ~ that removed it from the command "
        f"line ({key}, or ~ of a key above it)"
        for key in removed
    ]


def test_step_checkpoints_still_save_at_each_epochs_end_and_the_runs(
    tmp_path: Path, torch_home: Path
) -> None:
    """With callbacks.checkpoint.every_n_steps set, Lightning saved only every N steps: a run of
    5 steps every 3 ended with last.ckpt at step 3, and nothing at an epoch's end (hostile
    review), where the README promises last.ckpt at the end of each epoch and of the run."""
    args = [*SHORT, "trainer.max_steps=5", "data.num_samples=8",  # 2-step epochs
            "callbacks.checkpoint.every_n_steps=3", "callbacks.checkpoint.keep_last_k=5"]  # fmt: skip
    assert run_cli("pipeline.train", args, tmp_path, torch_home).returncode == 0
    checkpoints = only_run_dir(tmp_path) / "checkpoints"
    steps = {p.name: torch.load(p, weights_only=True)["global_step"] for p in checkpoints.iterdir()}
    assert steps == {"last.ckpt": 5, "step-000002.ckpt": 2, "step-000003.ckpt": 3,
                     "step-000004.ckpt": 4, "step-000005.ckpt": 5}  # fmt: skip


def test_a_resumed_run_keeps_its_last_k_step_checkpoints(tmp_path: Path, torch_home: Path) -> None:
    """last.ckpt held the kept files' state from before its own step's file was saved, so a
    resume never deleted that file: 3 step files with keep_last_k=2 (hostile review)."""
    run_dir = tmp_path / "run"
    args = [*SHORT, "data.num_samples=64", "callbacks.checkpoint.every_n_steps=2",
            "callbacks.checkpoint.keep_last_k=2", f"hydra.run.dir={run_dir}"]  # fmt: skip
    result = run_cli("pipeline.train", [*args, "trainer.max_steps=6"], tmp_path, torch_home)
    assert result.returncode == 0, result.stderr[-2000:]
    result = run_cli(
        "pipeline.train", [f"resume={run_dir}", "trainer.max_steps=12"], tmp_path, torch_home
    )
    assert result.returncode == 0, result.stderr[-2000:]
    kept = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert kept == ["last.ckpt", "step-000010.ckpt", "step-000012.ckpt"]


def test_keep_last_k_step_checkpoints_and_resume_latest(tmp_path: Path, torch_home: Path) -> None:
    args = [
        *SHORT,
        "trainer.max_steps=4",
        "callbacks.checkpoint.every_n_steps=1",
        "callbacks.checkpoint.keep_last_k=2",
    ]
    assert run_cli("pipeline.train", args, tmp_path, torch_home).returncode == 0
    older = only_run_dir(tmp_path)
    kept = sorted(p.name for p in (older / "checkpoints").iterdir())
    assert kept == ["last.ckpt", "step-000003.ckpt", "step-000004.ckpt"]
    assert (
        torch.load(older / "checkpoints" / "step-000003.ckpt", weights_only=True)["global_step"]
        == 3
    )
    time.sleep(1.1)  # a new HH-MM-SS
    assert run_cli("pipeline.train", SHORT, tmp_path, torch_home).returncode == 0
    newer = max((p for p in (tmp_path / "outputs").glob("*/*") if p != older), key=lambda p: p.name)
    result = run_cli(
        "pipeline.train", ["resume=latest", "trainer.max_steps=3"], tmp_path, torch_home
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert str(newer) in result.stdout.replace("\n", "")
    assert torch.load(newer / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


@pytest.mark.parametrize(
    "command",
    ["pipeline.train", "pipeline.eval", "pipeline.bench", "pipeline.search", "pipeline.replay"],
)
def test_a_rank_lightnings_import_would_end_on_is_one_line_from_every_command(
    command: str, tmp_path: Path, torch_home: Path
) -> None:
    """RANK=abc: every command, `python -m` and console script alike, ended in Lightning's own
    ValueError traceback as it was imported. Now its first line says so, before any import."""
    env = cli_env(torch_home) | {"RANK": "abc"}
    script = Path(sys.executable).parent / command.replace(".", "-")
    here = tmp_path / "here"
    here.mkdir()
    for argv in ([sys.executable, "-m", command], [str(script)]):
        done = subprocess.run(argv, cwd=here, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.splitlines() == [
            f"{command}: 1 config problem:",
            "  - RANK='abc' is not a rank (a whole number, from 0); unset RANK, or start the "
            "processes with torchrun",
        ], argv
        assert not any(here.iterdir())  # nothing written

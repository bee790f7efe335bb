"""The real `python -m pipeline.train` / `pipeline.eval` as subprocesses, at small size."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from helpers import TINY, only_run_dir, run_cli, scalars


def _job_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "outputs" / "multirun").glob("*/*/*") if p.is_dir())


def _finite(ckpt: Path) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_default_run_trains_and_writes_the_run_directory(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli("pipeline.train", [], tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d", f"{run.parent.name}/{run.name}")
    assert f"Run directory: {run}" in result.stdout.replace("\n", "")
    assert "train/loss:" in result.stdout  # the progress bar shows it, read on logging steps only
    assert "Total FLOPs: 297 M" in result.stdout  # the model summary's: one 64×64 image forward
    assert {p.name for p in (run / ".hydra").iterdir()} >= {"config.yaml", "overrides.yaml"}
    assert "Trainer.fit` stopped: `max_steps=16` reached" in (run / "train.log").read_text()
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events and not list((run / "tensorboard").glob("version_*"))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 16  # 16 steps × 32 images: 512 images trained on
    assert _finite(run / "checkpoints" / "last.ckpt")

    tags = scalars(run / "tensorboard")
    assert [s for s, _ in tags["train/loss"]] == [3, 7, 11, 15]  # every 4 steps (0-based step)
    assert all(math.isfinite(v) for _, v in tags["train/loss"])
    assert tags["train/loss"][-1][1] < tags["train/loss"][0][1]  # the seed's loss falls (to −∞)
    assert math.isfinite(tags["val/loss"][-1][1])
    assert all(v == pytest.approx(1e-3) for _, v in tags["train/lr"])
    assert all(v > 0 for _, v in tags["perf/images_per_sec"])
    # Logged only on logging steps (to skip self.log's cost), yet on exactly the loss's steps.
    for tag in ("train/lr", "perf/images_per_sec", "grad_norm/total"):
        assert [s for s, _ in tags[tag]] == [3, 7, 11, 15], tag


def test_each_optimizer_runs_in_a_multirun(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli(
        "pipeline.train", ["-m", "optimizer=sgd,adam,adamw,rmsprop", *TINY], tmp_path, torch_home
    )
    assert result.returncode == 0, result.stderr
    jobs = _job_dirs(tmp_path)
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1", "2", "3"]
    for job, name in zip(jobs, ["sgd", "adam", "adamw", "rmsprop"], strict=True):
        assert f"optimizer={name}" in job.name  # TensorBoard's run list tells jobs apart
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert list((job / "tensorboard").glob("events.out.tfevents.*"))
        assert "_target_: torch.optim." in (job / ".hydra" / "config.yaml").read_text()


def test_each_loss_runs(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli(
        "pipeline.train", ["-m", "loss=sum_diff,mse,cross_entropy", *TINY], tmp_path, torch_home
    )
    assert result.returncode == 0, result.stderr
    losses = [scalars(job / "tensorboard")["train/loss"][0][1] for job in _job_dirs(tmp_path)]
    assert len(losses) == 3
    assert losses[0] < -100  # sum over 4 × 1000 logits minus labels in [0, 1)
    assert 0 < losses[1] < 10  # mean squared error of small logits against [0, 1)
    assert losses[2] == pytest.approx(math.log(1000), rel=0.2)  # near-uniform over 1000 classes


def test_a_failed_job_leaves_the_sweeps_other_jobs_to_run_and_sets_its_exit_code(
    tmp_path: Path, torch_home: Path
) -> None:
    """A job's exit ended the whole sweep: the jobs after a diverged one never ran (review)."""
    args = ["-m", "optimizer.lr=1e38,1e-3", *TINY, "loss=sum_diff", "callbacks=minimal"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 3, result.stderr[-2000:]  # the diverged job's
    diverged, trained = _job_dirs(tmp_path)
    assert (diverged / "divergence.json").exists()
    assert (trained / "checkpoints" / "last.ckpt").exists()
    assert result.stderr.strip().splitlines()[-1] == (
        f"pipeline.train: 1 of the 2 job(s) the sweep ran failed, each named above with its reason in "
        f"{diverged.parent}: {diverged.name} (exit 3)"
    )


def test_cpu_precisions_run(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli(
        "pipeline.train",
        ["-m", "precision=32-true,bf16-mixed,64-true", *TINY],
        tmp_path,
        torch_home,
    )
    assert result.returncode == 0, result.stderr
    dtypes = [
        torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"][
            "net.fc.weight"
        ].dtype
        for job in _job_dirs(tmp_path)
    ]
    assert dtypes == [torch.float32, torch.float32, torch.float64]


def test_experiment_seed_takes_one_sgd_step_from_torchvision_weights(
    tmp_path: Path, torch_home: Path, fake_hub_weights: Path
) -> None:
    result = run_cli(
        "pipeline.train", ["experiment=seed", "callbacks.progress_bar=false"], tmp_path, torch_home
    )
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(only_run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1
    before = torch.load(fake_hub_weights, weights_only=True)["fc.bias"]
    # One image, loss (pred − labels).sum(): ∂L/∂fc.bias = 1, so SGD moves the bias by −lr.
    torch.testing.assert_close(ckpt["state_dict"]["net.fc.bias"], before - 1e-3, rtol=0, atol=1e-6)


def test_eval_reproduces_the_runs_val_loss(tmp_path: Path, torch_home: Path) -> None:
    assert run_cli("pipeline.train", ["loss=mse", *TINY], tmp_path, torch_home).returncode == 0
    run = only_run_dir(tmp_path)
    val_loss = scalars(run / "tensorboard")["val/loss"][-1][1]
    result = run_cli(
        "pipeline.eval",
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "device=ddp_cpu"],
        tmp_path,
        torch_home,
    )
    assert result.returncode == 0, result.stderr
    # Eval runs one process: it says so of a device group for several, and scores the same.
    note = "pipeline.eval runs one process on one device: device.devices=2 is not used"
    assert result.stdout.count(f"[WARNING] - {note}") == 1, result.stdout
    assert "Be aware that when using `ckpt_path`" not in result.stderr  # Lightning's, for training
    printed = float(re.search(r"val/loss\s*│\s*([-\d.e+]+)", result.stdout).group(1))  # type: ignore[union-attr]
    assert printed == pytest.approx(val_loss, rel=1e-5)
    (eval_dir,) = (tmp_path / "outputs" / "eval").glob("*/*")
    assert scalars(eval_dir / "tensorboard")["val/loss"][0][1] == pytest.approx(val_loss, rel=1e-5)


def test_help_lists_groups_and_options(tmp_path: Path, torch_home: Path) -> None:
    result = run_cli("pipeline.train", ["--help"], tmp_path, torch_home)
    assert result.returncode == 0
    assert result.stdout.startswith("pipeline.train: train torchvision's ResNet18")
    assert "optimizer: adam, adamw, rmsprop, sgd" in result.stdout
    assert "device: auto, cpu, ddp, ddp_cpu, gpu" in result.stdout
    assert "batch_size: 32" in result.stdout
    assert "resume=latest" in result.stdout  # not a config key: only the examples name it
    # Not pipeline.search's space nor Hydra's launchers: no group a run takes.
    assert "\nsearch:" not in result.stdout and "\nhydra:" not in result.stdout


def test_cfg_job_shows_the_config_the_command_line_makes_and_checks_it(
    tmp_path: Path, torch_home: Path
) -> None:
    """`--cfg job` skipped the pre-flight (review): a typo was Hydra's multi-line error and exit
    1, `trainer.NAME=VALUE` and `resume=` were refused as keys. Now resume= is expanded, a
    Trainer argument passes, a typo is one line (exit 2), and nothing is made in outputs/."""
    run = tmp_path / "a run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- loss=mse\n- data.image_size=32\n")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")  # not read: only shown
    args = [f"resume={run}", "trainer.max_steps=6", "trainer.benchmark=true", "--cfg", "job"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["loss"]["name"] == "mse" and shown["data"]["image_size"] == 32
    assert shown["ckpt_path"] == str(run / "checkpoints" / "last.ckpt")
    assert shown["trainer"]["max_steps"] == 6 and shown["trainer"]["benchmark"] is True
    result = run_cli("pipeline.train", ["optimzer.lr=1", "--cfg", "job"], tmp_path, torch_home)
    assert result.returncode == 2
    assert result.stderr.splitlines()[1].startswith("  - optimzer.lr is not a config key")
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    swept = ["--cfg", "job", "-m", "optimizer.lr=0.1,0.01"]  # Hydra's traceback, exit 1
    result = run_cli("pipeline.train", swept, tmp_path, torch_home)
    assert (
        result.returncode == 2 and "drop -m" in result.stderr and "Traceback" not in result.stderr
    )
    assert not (tmp_path / "outputs").exists()


def test_eval_and_bench_have_help_of_their_own(tmp_path: Path, torch_home: Path) -> None:
    """pipeline.bench --help printed pipeline.train's text; pipeline.eval --help, Hydra's
    generic one listing the optimizer, scheduler and search groups, which eval does not take."""
    result = run_cli("pipeline.eval", ["--help"], tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pipeline.eval: score a checkpoint of pipeline.train")
    groups = result.stdout.split("== Groups (GROUP=OPTION) ==\n")[1].split("\n\n")[0]
    assert groups.splitlines() == [
        "data: synthetic",
        "device: auto, cpu, ddp, ddp_cpu, gpu",
        "logger: csv, mlflow, none, tensorboard",
    ]
    assert "ckpt_path: ???" in result.stdout
    result = run_cli("pipeline.bench", ["--help"], tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pipeline.bench: the pipeline against a plain PyTorch loop")
    assert "optimizer: adam, adamw, rmsprop, sgd" in result.stdout
    assert "overhead_steps: 0" in result.stdout and "pipeline.train: train" not in result.stdout


def test_bad_input_exits_2_with_one_line_each_and_no_traceback(
    tmp_path: Path, torch_home: Path
) -> None:
    result = run_cli(
        "pipeline.train", ["data.batch_size=abc", "optimizer.lr=0"], tmp_path, torch_home
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "pipeline.train: 2 config problems:",
        "  - optimizer.lr must be a number > 0 (got 0); set optimizer.lr=1e-3",
        "  - data.batch_size must be an integer ≥ 1 (got 'abc'); set data.batch_size=32",
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing half-written


def test_offline_default_weights_exit_2(tmp_path: Path, torch_home: Path) -> None:
    """Before anything runs: the failed download left a claimed run directory, and in a
    multirun came after the jobs before it had trained."""
    result = run_cli("pipeline.train", ["model.weights=DEFAULT", *TINY], tmp_path, torch_home)
    assert result.returncode == 2
    assert "hub/checkpoints/resnet18-f37072fd.pth or set model.weights=null" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # nothing half-written
    result = run_cli(
        "pipeline.train", ["-m", "model.weights=null,DEFAULT", *TINY], tmp_path, torch_home
    )
    assert result.returncode == 2
    assert (
        "  - in the job model.weights=DEFAULT: model.weights=DEFAULT could not be" in result.stderr
    )
    assert not (tmp_path / "outputs").exists()  # no job trained


def test_divergence_stops_with_the_step_and_a_finite_checkpoint(
    tmp_path: Path, torch_home: Path
) -> None:
    # lr 1e20 overflows the seed's loss within a few steps, whatever the random init.
    args = ["optimizer.lr=1e20", *TINY, "trainer.max_steps=20", "data.num_samples=80"]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 3, result.stderr
    assert re.search(
        r"train/loss became (-?inf|nan) at step \d+( \(the first block[^)]*\))?: the seed's loss",
        result.stderr,
    )
    assert "use loss=mse or loss=cross_entropy for long runs" in result.stderr
    assert "Traceback" not in result.stderr
    assert _finite(only_run_dir(tmp_path) / "checkpoints" / "last.ckpt")
    # A run that fails has its hyperparameters beside its events (written when training starts).
    hparams = yaml.safe_load((only_run_dir(tmp_path) / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["optimizer.lr"] == 1e20

"""device=ddp_cpu: two real processes on gloo, one run directory, the analytic check on every rank."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DistributedSampler

from helpers import DIVERGED, TINY, CliProcess, only_run_dir, run_cli, scalars, start_cli
from pipeline import build
from pipeline.callbacks.graceful_stop import DDP_CHECK_EVERY
from pipeline.cli import compose


def test_ddp_cpu_writes_one_run_directory_and_checks_every_rank(
    tmp_path: Path, torch_home: Path
) -> None:
    # With DDP's two speed options on: gradients as bucket views, and the static graph.
    args = ["device=ddp_cpu", "debug=fast", "loss=mse", "callbacks.gradient_check.every_n_steps=1",
            "callbacks.progress_bar=false", "device.gradient_as_bucket_view=true",
            "device.static_graph=true"]  # fmt: skip
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)  # Lightning's child process reuses the parent's directory
    assert "global batch 8 (2 process(es) × data.batch_size=4)" in result.stdout.replace("\n", "")
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 logged beside rank 0
    tags = scalars(run / "tensorboard")
    passed = tags["gradcheck/passed"]
    assert [v for _, v in passed] == [
        1.0
    ] * 4  # a failing rank would have raised and exited non-zero
    # The noise scale's communication hook works beside both options: rank 0's 4 against all 8.
    assert [v for _, v in tags["grad_noise/batch_size"]] == [8.0] * 4
    assert all(math.isfinite(v) for _, v in tags["grad_noise/b_simple/layer2"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # 16 samples / (2 ranks × 4) = 2 steps an epoch, 2 epochs


def test_ddp_cpu_train_loss_is_the_mean_of_the_ranks_losses(
    tmp_path: Path, torch_home: Path
) -> None:
    """train/loss under DDP is the mean over the processes of each one's loss on its own samples,
    reduced by the module before it is written. (Lightning gives each process a
    DistributedSampler that shuffles the training samples, seeded with the run's seed.)"""
    args = ["device=ddp_cpu", "debug=fast", "loss=mse", "trainer.max_steps=1",
            "callbacks.progress_bar=false"]  # fmt: skip
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    ((step, logged),) = scalars(only_run_dir(tmp_path) / "tensorboard")["train/loss"]

    cfg = compose("train", ["debug=fast", "loss=mse", "device=cpu"])
    pl.seed_everything(cfg.seed, workers=True, verbose=False)  # as each rank's train.py does
    datamodule, module = build.build_datamodule(cfg), build.build_module(cfg)
    losses = []
    for rank in (0, 1):  # the first batch of each: 4 of the 16 samples
        order = DistributedSampler(range(16), num_replicas=2, rank=rank, seed=cfg.seed)
        indices = torch.tensor(list(order)[:4])
        images, labels = datamodule.samples(indices, "train", torch.device("cpu"))
        losses.append(float(module.loss_fn(module.train()(images), labels)))
    assert step == 0
    assert logged == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert logged != pytest.approx(losses[0], rel=1e-3)  # not rank 0's own


def test_multirun_with_ddp_cpu_runs_each_job_on_spawned_processes(
    tmp_path: Path, torch_home: Path
) -> None:
    args = [
        "-m",
        "optimizer.lr=0.01,0.1",
        "device=ddp_cpu",
        "debug=fast",
        "loss=mse",
        "callbacks.progress_bar=false",
    ]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in (tmp_path / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert [j.name.split("_")[0] for j in jobs] == ["0", "1"]
    for job in jobs:
        assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
        assert len(list((job / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_killed_rank_ends_the_run_nonzero_within_the_timeout(
    tmp_path: Path, torch_home: Path
) -> None:
    args = ["device=ddp_cpu", "device.timeout_s=30", "loss=mse", "data.image_size=32", "data.batch_size=4",
            "data.num_samples=8000", "trainer.max_steps=1000", "callbacks.progress_bar=false"]  # fmt: skip
    proc, rank1 = _training_with_rank1(args, tmp_path, torch_home)
    os.kill(rank1, signal.SIGKILL)
    killed = time.monotonic()
    _, stderr = proc.communicate(timeout=30 + 60)  # the collective timeout, plus teardown
    assert time.monotonic() - killed < 90
    assert proc.returncode == 5
    assert "pipeline.train: a process of this DDP run failed, died or timed out" in stderr
    assert "Traceback" not in stderr


def test_a_signal_to_one_rank_stops_every_rank_and_the_command_says_so(
    tmp_path: Path, torch_home: Path
) -> None:
    """SIGTERM to rank 1 alone (a scheduler that signals one process): the ranks agree on it at
    their next check, all stop at one step after saving, and the command, rank 0, reports the
    stop and exits 143 (it printed its run directory and exited 0)."""
    args = ["device=ddp_cpu", "loss=mse", "data.image_size=32", "data.batch_size=4",
            "data.num_samples=8000", "trainer.max_steps=1000", "callbacks.progress_bar=false"]  # fmt: skip
    proc, rank1 = _training_with_rank1(args, tmp_path, torch_home)
    os.kill(rank1, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr
    run = only_run_dir(tmp_path)
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < step < 1000 and step % DDP_CHECK_EVERY == 0  # the ranks' agreed check
    assert f"stopped by SIGTERM after step {step}" in stderr.replace("\n", "")
    assert stderr.count("stopped by SIGTERM") == 1  # said once, by rank 0
    assert "Traceback" not in stderr


def _training_with_rank1(
    args: list[str], tmp_path: Path, torch_home: Path
) -> tuple[CliProcess, int]:
    """A DDP run started in `tmp_path` once it trains, and its rank 1's pid."""
    proc = start_cli("pipeline.train", args, tmp_path, torch_home)
    deadline = time.monotonic() + 120
    while (
        not list(tmp_path.glob("outputs/*/*/train.log"))
        or "first training step" not in only_run_dir(tmp_path).joinpath("train.log").read_text()
    ):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    rank1 = [  # this test's rank 1: tests may run side by side (pytest -n)
        pid
        for pid in subprocess.check_output(
            ["pgrep", "-f", "hydra.job.name=train_ddp_process_1"], text=True
        ).split()
        if Path(f"/proc/{pid}/cwd").resolve() == tmp_path.resolve()
    ]
    return proc, int(rank1[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("pinned", [False, True])
def test_torchrun_two_processes_share_one_run_directory(
    pinned: bool, tmp_path: Path, torch_home: Path
) -> None:
    """Each process composes its config, yet one directory; rank 1 logs to train_rank1.log,
    also in a directory the command pins (each rank wrote train.log there: review)."""
    # torchrun's agent forked warm; its workers too, through tests/warm_python.py
    pin = [f"hydra.run.dir={tmp_path / 'pinned run'}"] if pinned else []
    args = ["--nproc_per_node=2", f"--master_port={_free_port()}", "-m", "pipeline.train",
            "device=ddp_cpu", "debug=fast", "loss=mse", "callbacks.progress_bar=false", *pin]  # fmt: skip
    result = run_cli("torch.distributed.run", args, tmp_path, torch_home, timeout=300)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "pinned run" if pinned else only_run_dir(tmp_path)
    assert {p.name for p in run.iterdir()} >= {
        "train.log",
        "train_rank1.log",
        "tensorboard",
        "checkpoints",
        ".hydra",
    }
    assert "GLOBAL_RANK: 1" not in (run / "train.log").read_text()
    assert "GLOBAL_RANK: 1" in (run / "train_rank1.log").read_text()
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


@pytest.mark.parametrize("rendezvous", ["static", "c10d"])
def test_torchrun_two_nodes_agree_on_one_run_directory_without_a_shared_disk(
    rendezvous: str, tmp_path: Path, torch_home: Path
) -> None:
    """Two torchrun agents on loopback, each in its own folder as on its own disk: rank 1 learns
    rank 0's run directory through torch's store, and logs under the same path."""
    port = _free_port()
    launch = {
        "static": ["--master_addr=127.0.0.1", f"--master_port={port}"],
        "c10d": [
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint=127.0.0.1:{port}",
            f"--rdzv-id=job{port}",
        ],
    }[rendezvous]
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    agents = []
    for node_rank, node in enumerate(nodes):  # each agent forked warm, in a session of its own
        node.mkdir()
        args = ["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}", *launch, "-m",
                "pipeline.train", "device=ddp_cpu", "device.devices=1", "device.num_nodes=2",
                "loss=mse", "callbacks=minimal", *TINY]  # fmt: skip
        agents.append(start_cli("torch.distributed.run", args, node, torch_home, new_session=True))
    try:
        codes = [agent.wait(timeout=120) for agent in agents]
    finally:
        for agent in agents:  # the agent and its workers, should any outlive it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent.pid, signal.SIGKILL)
    outputs = [agent.communicate(timeout=10) for agent in agents]
    logs = "\n".join(
        f"--- {n.name}\n{out}{err}" for n, (out, err) in zip(nodes, outputs, strict=True)
    )
    assert codes == [0, 0], logs
    run0, run1 = only_run_dir(nodes[0]), only_run_dir(nodes[1])
    assert run1.relative_to(nodes[1]) == run0.relative_to(nodes[0]), logs
    assert (run0 / "train.log").is_file() and (run0 / "checkpoints" / "last.ckpt").is_file()
    assert "first training step" in (run1 / "train_rank1.log").read_text()


def test_submitit_local_launcher_runs_a_job(tmp_path: Path, torch_home: Path) -> None:
    args = [
        "-m",
        "hydra/launcher=submitit_local",
        "debug=fast",
        "loss=mse",
        "callbacks.progress_bar=false",
    ]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    (sweep,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    assert (sweep / ".submitit").is_dir()
    (job,) = [p for p in sweep.iterdir() if p.is_dir() and p.name.startswith("0_")]
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_ddp_cpu_divergence_stops_both_ranks_with_one_state_either_check(
    tmp_path: Path, torch_home: Path
) -> None:
    """optimizer.fused=true takes the deferred check (the flag all-reduced on the device, read
    later); false, the immediate one. Both ranks stop at one step, and save the same state;
    the message is rank 0's alone (each rank printed its own, with its own loss)."""
    saved = {}
    for fused in ("false", "true"):
        run = tmp_path / f"fused-{fused}"
        args = ["device=ddp_cpu", "data.image_size=32", "data.batch_size=4", "data.num_val_samples=4",
                "callbacks.progress_bar=false", "optimizer.lr=1e20", f"optimizer.fused={fused}",
                "trainer.max_steps=20", "data.num_samples=160", f"hydra.run.dir={run}"]  # fmt: skip
        result = run_cli("pipeline.train", args, tmp_path, torch_home)
        assert result.returncode == 3, result.stderr
        assert DIVERGED.search(result.stderr) and "Traceback" not in result.stderr
        assert result.stderr.count("pipeline.train:") == 1, result.stderr
        saved[fused] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    at_once, deferred = saved["false"], saved["true"]
    assert deferred["global_step"] == at_once["global_step"] + 3  # the bad step and 2 more, skipped
    for name, value in at_once["state_dict"].items():
        assert torch.equal(value, deferred["state_dict"][name]), name

"""device=ddp_cpu: two real processes on gloo, one run directory, the analytic check on every rank."""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import only_run_dir, run_cli, scalars


def test_ddp_cpu_writes_one_run_directory_and_checks_every_rank(
    tmp_path: Path, torch_home: Path
) -> None:
    args = ["device=ddp_cpu", "debug=fast", "loss=mse", "callbacks.gradient_check.every_n_steps=1",
            "callbacks.progress_bar=false"]  # fmt: skip
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    run = only_run_dir(tmp_path)  # Lightning's child process reuses the parent's directory
    assert "global batch 8 (2 process(es) × data.batch_size=4)" in result.stdout.replace("\n", "")
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 logged beside rank 0
    passed = scalars(run / "tensorboard")["gradcheck/passed"]
    assert [v for _, v in passed] == [
        1.0
    ] * 4  # a failing rank would have raised and exited non-zero
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4  # 16 samples / (2 ranks × 4) = 2 steps an epoch, 2 epochs

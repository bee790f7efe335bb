"""The loss's mean over DDP processes: Lightning's reduce, without its barrier (under NCCL a
barrier waits for the GPU). Two real processes on gloo."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightning.fabric.utilities.distributed import _sync_ddp
from torch import nn

from pipeline.collectives import mean_over_processes
from pipeline.model import ResNetClassifier


def _rank(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    values = torch.tensor([0.1, 1e-8, 3.0], dtype=torch.float32) * (rank + 1.7)
    expected = _sync_ddp(values.clone(), reduce_op="mean")  # Lightning's, barrier and all

    def no_barrier(*args: object, **kwargs: object) -> None:
        raise AssertionError("a barrier: under NCCL the host waits for the GPU")

    barrier, dist.barrier = dist.barrier, no_barrier  # type: ignore[assignment]
    try:
        mine = values.clone()
        got = mean_over_processes(mine)
    finally:
        dist.barrier = barrier
    # A single-device fit in a process that holds a group of its own averages nothing.
    module = ResNetClassifier(
        net=nn.Linear(1, 1), loss_fn=nn.functional.mse_loss, optimizer_factory=torch.optim.SGD,
        scheduler_kwargs={}, channels_last=False,
    )  # fmt: skip
    module.trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    module._step_loss = torch.tensor(rank + 1.0)
    module._keep_loss()
    torch.save({"got": got, "in_place": got is mine, "expected": expected,
                "single_device": module.logged_loss}, f"{out}.{rank}")  # fmt: skip
    dist.destroy_process_group()


def test_the_mean_over_processes_is_lightnings_without_its_barrier(tmp_path: Path) -> None:
    out = str(tmp_path / "mean")
    mp.spawn(_rank, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(f"{out}.{rank}", weights_only=True)
        assert result["in_place"]
        assert torch.equal(result["got"], result["expected"])  # bitwise, on every rank
        assert result["single_device"].item() == rank + 1.0


def test_one_process_is_left_as_it_is() -> None:
    t = torch.tensor(2.5)
    assert mean_over_processes(t) is t and t.item() == 2.5

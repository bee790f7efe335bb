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

from pipeline.collectives import max_over_processes_queued, mean_over_processes
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
        signal_max = max_over_processes_queued(7 if rank == 1 else 2, torch.device("cpu")).read()
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
                "single_device": module.logged_loss, "max": signal_max}, f"{out}.{rank}")  # fmt: skip
    dist.destroy_process_group()


def test_the_reductions_over_processes_take_no_barrier(tmp_path: Path) -> None:
    """The loss's mean is Lightning's, bitwise; the stop signal's maximum, queued, reads the
    highest; neither passes a barrier."""
    out = str(tmp_path / "mean")
    mp.spawn(_rank, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(f"{out}.{rank}", weights_only=True)
        assert result["in_place"]
        assert torch.equal(result["got"], result["expected"])  # bitwise, on every rank
        assert result["single_device"].item() == rank + 1.0
        assert result["max"] == 7  # the stop signal's agreement: the highest of the ranks' numbers


def test_one_process_is_left_as_it_is() -> None:
    t = torch.tensor(2.5)
    assert mean_over_processes(t) is t and t.item() == 2.5


def _timed_rank(rank: int, init_file: str, out: str) -> None:
    """TimedCheckpoint under DDP, steps 1–48 driven by hand: rank 0's clock passes the interval
    at step 8 and again at step 32; an epoch's save comes at step 36."""
    from types import SimpleNamespace

    from pipeline.callbacks import timed_checkpoint
    from pipeline.callbacks.timed_checkpoint import TimedCheckpoint

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    clock = [0.0]
    if rank == 0:  # only rank 0's clock counts
        timed_checkpoint.time.monotonic = lambda: clock[0]  # type: ignore[attr-defined]
    saves: list[int] = []
    callback = TimedCheckpoint(checkpoint_path=Path("unused"), every_n_minutes=1 / 60)  # 1 s
    trainer = SimpleNamespace(global_step=0, world_size=2,
                              strategy=SimpleNamespace(root_device=torch.device("cpu")))  # fmt: skip

    def save(path: Path) -> None:
        saves.append(trainer.global_step)
        callback.on_save_checkpoint(trainer, None, {})  # type: ignore[arg-type]

    trainer.save_checkpoint = save
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    for step in range(1, 49):
        trainer.global_step = step
        clock[0] = {8: 5.0, 32: 10.0}.get(step, clock[0])
        if step == 36:
            save(Path("unused"))  # the epoch's end: the interval starts again
        callback.on_train_batch_end(trainer, None, None, None, step)  # type: ignore[arg-type]
    torch.save(saves, f"{out}.{rank}")
    dist.destroy_process_group()


def test_the_timed_checkpoint_under_ddp_saves_on_every_rank_at_the_check_after_rank_0s_clock(
    tmp_path: Path,
) -> None:
    """Rank 0's clock, broadcast at a check (every 8 steps) and read at the next: due at step 8,
    saved at 16 on both ranks; due again at 32, but the epoch's save at 36 came between: no save
    at 40."""
    out = str(tmp_path / "saves")
    mp.spawn(_timed_rank, args=(str(tmp_path / "init"), out), nprocs=2, join=True)
    assert [torch.load(f"{out}.{rank}") for rank in (0, 1)] == [[16, 36], [16, 36]]

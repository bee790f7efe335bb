"""device.sync_batchnorm on CUDA: 2 processes × batch B train like 1 process on the 2B batch.

torch's SyncBatchNorm runs on CUDA only, so this needs a GPU; one is enough: both processes
share it over gloo (NCCL refuses two ranks on one GPU). The model, data and optimizer come from
the pipeline's builders; the BatchNorm conversion and DDP wrapping are what Lightning does for
`device=ddp device.sync_batchnorm=true`. loss=mse is a mean, so DDP's gradient averaging over
ranks equals the gradient of the mean over the whole 2B batch. In float64, so that what is
compared is the math: in float32, BatchNorm over a few values per channel amplifies the
different summation orders of one batch and two half batches into differences of 1e-4 and more.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pipeline import build
from pipeline.cli import compose

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="SyncBatchNorm is CUDA-only"),
]
B, STEPS = 4, 3
OVERRIDES = ["loss=mse", "data.image_size=64", f"data.batch_size={B}", "model.num_classes=10"]


def _setup() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    """The pipeline's model (seeded init), optimizer, and the first 2B training samples: float64,
    on CUDA."""
    torch.backends.cudnn.deterministic = True
    cfg = compose("train", OVERRIDES)
    torch.manual_seed(cfg.seed)
    module = build.build_module(cfg)
    images, labels = build.build_datamodule(cfg).samples(
        torch.arange(2 * B), "train", torch.device("cuda")
    )
    net = module.net.cuda().double()
    optimizer = module.optimizer_factory(net.parameters())
    return net, optimizer, images.double(), labels.double()


def _train(net: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
           labels: torch.Tensor) -> dict[str, torch.Tensor]:  # fmt: skip
    for _ in range(STEPS):
        optimizer.zero_grad()
        nn.functional.mse_loss(net(images.cuda()), labels.cuda()).backward()
        optimizer.step()
    inner = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def _rank(rank: int, init_file: str, sync: bool, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    net, optimizer, images, labels = _setup()
    if sync:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    ddp = nn.parallel.DistributedDataParallel(net, device_ids=[0])
    state = _train(
        ddp, optimizer, images[rank * B : (rank + 1) * B], labels[rank * B : (rank + 1) * B]
    )
    if rank == 0:
        torch.save(state, out)
    dist.destroy_process_group()


def _two_processes(tmp_path: Path, sync: bool) -> dict[str, torch.Tensor]:
    out = tmp_path / f"ddp-sync-{sync}.pt"
    mp.spawn(_rank, args=(str(tmp_path / f"init-{sync}"), sync, str(out)), nprocs=2, join=True)
    return torch.load(out, weights_only=True)


def _relative_differences(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> dict[str, float]:
    """Per floating-point tensor: max |a − b| / max |b|, worst first."""
    diffs = {
        k: float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp_min(1e-30))
        for k in b
        if b[k].is_floating_point()
    }
    return dict(sorted(diffs.items(), key=lambda kv: -kv[1]))


def test_two_processes_with_sync_batchnorm_equal_one_process_on_the_whole_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # _setup sets cuDNN deterministic in this process too: restored after, for the tests after
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", torch.backends.cudnn.deterministic)
    single = _train(*_setup())
    synced = _relative_differences(_two_processes(tmp_path, sync=True), single)
    worst = list(synced.items())[:3]
    assert worst[0][1] < 1e-7, worst  # weights and BatchNorm running statistics
    # The control: without SyncBatchNorm each process normalizes its own B images, and differs.
    unsynced = _relative_differences(_two_processes(tmp_path, sync=False), single)
    assert next(iter(unsynced.values())) > 1e-3

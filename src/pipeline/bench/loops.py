"""The three loops the bench times, each one round of `warmup + steps` steps from the same init.

`time_trainer`: the pipeline's Trainer (any variant's config). `time_plain_pytorch`: the seed's loop by
hand with the run's data, model settings, precision and CUDA flags. `time_naive`: the notebook
as written. All three are timed by the same `StepClock`.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import cast

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig
from torch import nn
from torchvision.models import ResNet

from pipeline import build
from pipeline.bench.clock import StepClock, StepTimer, Timing
from pipeline.bench.hook_clock import HookClock
from pipeline.bench.variants import merged
from pipeline.callbacks import graceful_stop_of
from pipeline.callbacks.cuda_flags import TORCH_DEFAULTS, flags_for, scoped_flags
from pipeline.callbacks.graceful_stop import STOP_SIGNALS
from pipeline.losses import LOSSES
from pipeline.model import ResNetClassifier, compiled_forward


def time_trainer(
    cfg: DictConfig,
    warmup: int,
    steps: int,
    workdir: Path,
    module: Callable[[DictConfig], ResNetClassifier] = build.build_module,
    hook_clock: bool = True,
) -> Timing:
    """One round of the pipeline's Trainer: fresh model (from the same init), `warmup + steps`
    steps; with `hook_clock`, each callback's hooks timed too (which costs the step ~1 µs a hook
    call: the overhead bench times its step without it)."""
    pl.seed_everything(cfg.seed, verbose=False)
    timer = StepTimer(warmup, warmup + steps, build.run_device(cfg))
    hooks = HookClock(first_timed=warmup, steps=steps)  # the StepClock's timed steps
    clocks: list[pl.Callback] = [timer, hooks] if hook_clock else [timer]
    trainer = build.build_trainer(
        cfg, workdir, extra_callbacks=clocks, last_callbacks=[timer.end_mark]
    )
    trainer.fit(module(cfg), datamodule=build.build_datamodule(cfg))
    stop = graceful_stop_of(trainer)
    if stop is not None and stop.received is not None:  # Ctrl-C or SIGTERM ended the round
        raise BenchStopped(stop.received)
    timing = timer.clock.timing(timer.waits)
    timing.hook_s = hooks.per_step()
    return timing


class BenchStopped(Exception):
    """A signal stopped a timed run part-way: the round's figures would be wrong, so none are made."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """While the bench measures, SIGINT and SIGTERM raise BenchStopped wherever it is (a plain
    loop's step, bare Lightning, a process it waits for); a pipeline Trainer's GracefulStop
    takes them over for its fit, stops it between steps, and hands them back."""

    def stop(signum: int, frame: object) -> None:
        raise BenchStopped(signum)

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def autocast(cfg: DictConfig, device: torch.device) -> torch.autocast:
    """The autocast Lightning's precision plugin enters for the run's precision (off for *-true)."""
    dtype = {
        "bf16-mixed": torch.bfloat16,
        "16-mixed": torch.float16 if device.type == "cuda" else torch.bfloat16,
    }
    return torch.autocast(
        device.type, dtype=dtype.get(cfg.precision, torch.float32), enabled=cfg.precision in dtype
    )


def time_plain_pytorch(
    cfg: DictConfig,
    device: torch.device,
    warmup: int,
    steps: int,
    module: Callable[[DictConfig], ResNetClassifier] = build.build_module,
) -> Timing:
    """The seed's loop by hand (zero_grad, forward, loss, backward, step) with the run's
    DataLoader and data path, memory format, precision, compile, optimizer and CUDA flags, as
    the module (default: the run's) has them."""
    pl.seed_everything(cfg.seed, verbose=False)
    model = module(cfg)
    net = model.net.to(device)
    nhwc = build.channels_last(cfg)  # resolved once, not in the timed loop
    double = cfg.precision == "64-true"
    if nhwc:
        net = net.to(memory_format=torch.channels_last)
    if double:
        net = net.double()
    forward: Callable[[torch.Tensor], torch.Tensor] = net
    if cfg.model.compile:  # the module's compiled path, in the run's mode
        forward = compiled_forward(cast(ResNet, net), cfg.model.compile)
    optimizer = model.optimizer_factory(net.parameters())
    loss_fn = LOSSES[cfg.loss.name].fn
    datamodule = build.build_datamodule(cfg)
    batches = iter(datamodule.train_dataloader())
    flags = flags_for(**build.cuda_flag_settings(cfg))  # the run's, for this loop only
    with scoped_flags(flags) if device.type == "cuda" else nullcontext():
        clock = StepClock(warmup, warmup + steps, device)  # timed as StepTimer times the Trainer
        for _ in range(warmup + steps):
            indices = next(batches).indices.to(device, non_blocking=True)
            data, labels = datamodule.samples(indices, "train", device)  # (B, C, H, W), labels
            if nhwc:
                data = data.contiguous(memory_format=torch.channels_last)
            if double:
                data = data.double()
            optimizer.zero_grad()
            with autocast(cfg, device):  # the loss too: Lightning's training_step runs inside it
                loss = loss_fn(forward(data), labels)
            loss.backward()
            optimizer.step()
            clock.step_end()
    return clock.timing()


def naive_net(cfg: DictConfig, device: torch.device) -> nn.Module:
    """The run's ResNet18 with the same init as the other loops, in NCHW whatever
    model.channels_last says (the module converts its weights to NHWC, and cuDNN then runs NHWC
    convolutions for NCHW inputs too)."""
    pl.seed_everything(cfg.seed, verbose=False)
    return build.build_module(cfg).net.to(device).to(memory_format=torch.contiguous_format)


def time_naive(cfg: DictConfig, device: torch.device, warmup: int, steps: int) -> Timing:
    """The notebook as written: torch.rand batches, NCHW, float32, not compiled, the seed's loss,
    torch's default CUDA flags and the configured optimizer as torch builds it (not fused)."""
    model = naive_net(cfg, device)
    optimizer = build.optimizer_factory(merged(cfg, {"optimizer": {"fused": None}}))(
        model.parameters()
    )
    b, s, classes = cfg.data.batch_size, cfg.data.image_size, cfg.model.num_classes
    with scoped_flags(TORCH_DEFAULTS) if device.type == "cuda" else nullcontext():
        clock = StepClock(warmup, warmup + steps, device)
        for _ in range(warmup + steps):
            data = torch.rand(b, 3, s, s, device=device)
            labels = torch.rand(b, classes, device=device)
            optimizer.zero_grad()
            prediction = model(data)
            loss = (prediction - labels).sum()
            loss.backward()
            optimizer.step()
            clock.step_end()
    return clock.timing()

"""ResNet18 as a LightningModule: the network, its loss, its optimizer and schedule.

The training step is the seed's: forward, loss, (Lightning's) backward, optimizer step.
Logs train/loss, train/lr and val/loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torchvision.models import ResNet

from pipeline.collectives import mean_over_processes
from pipeline.errors import ConfigError
from pipeline.loggers import log_step_scalars
from pipeline.logging_steps import (
    is_last_step,
    logs_this_step,
    realign_logging_step,
    writes_step_logs,
)
from pipeline.resources import resnet18_for_images, resnet18_on_meta
from pipeline.restored_optimizer import apply_config_hyperparameters, changes_message
from pipeline.schedules import build_scheduler
from pipeline.settings import CompileMode
from pipeline.weights import (
    hub_cache_file,
    is_torchvision_weights,
    read_state_dict,
    state_dict_mismatch,
    torchvision_state_dict,
    unusable_values,
)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
# Attributes set on the module every step that are never a parameter, buffer or submodule:
# Lightning's hook name (set around each of its ~45 hook calls a step) and the step's values.
# nn.Module.__setattr__ looks each one up among those first (~4 µs here, 0.5 µs without).
PLAIN_STEP_ATTRIBUTES = frozenset(
    {"_current_fx_name", "_step_loss", "_step_lr", "_loss_kept", "logged_loss", "_window_size"}
)
TRAIN_LOSS = "train/loss"


def logged_metric(trainer: pl.Trainer, tag: str) -> Tensor | None:
    """The last value of `tag`: train/loss as ResNetClassifier keeps it (`logged_loss`),
    any other metric (val/loss; train/loss of a module that logs it with self.log) as
    Lightning keeps it; None before the first."""
    if tag == TRAIN_LOSS and hasattr(trainer.lightning_module, "logged_loss"):
        return cast(Tensor | None, trainer.lightning_module.logged_loss)
    return trainer.callback_metrics.get(tag)


def build_resnet18(*, weights: str | None, num_classes: int, channels: int = 3) -> nn.Module:
    """torchvision's ResNet18 with random init (weights=None), torchvision's weights, or a file's,
    for images of `channels` channels.

    The head is replaced by a fresh Linear(512, num_classes) when the weights have another size;
    a stem for another number of channels than the weights' is adapted from theirs
    (`adapt_stem`).
    """
    if weights is None:
        return resnet18_for_images(num_classes, channels)
    if is_torchvision_weights(weights):
        state = torchvision_state_dict(weights)
    else:
        state = read_state_dict(weights)
    net = cast(ResNet, _resnet18_for(state, num_classes))
    problems = _fit_problems(weights, net, state)
    if problems:
        raise ConfigError(problems)
    net.load_state_dict(state)
    if net.fc.out_features != num_classes:
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    if net.conv1.in_channels != channels:
        net.conv1 = adapt_stem(net.conv1, channels)
    return net


def adapt_stem(conv: nn.Conv2d, channels: int) -> nn.Conv2d:
    """A copy of the stem `conv` for images of `channels` channels that responds to an image with
    one value in every channel as `conv` does: fewer channels share the sum of its kernels
    equally; more keep its kernels for the first ones, zeros for the rest (which training then
    learns)."""
    weight = conv.weight.detach()
    old = weight.shape[1]
    if channels < old:
        adapted = weight.sum(dim=1, keepdim=True).expand(-1, channels, -1, -1) / channels
    else:
        adapted = torch.cat(
            [weight, weight.new_zeros(weight.shape[0], channels - old, *weight.shape[2:])], 1
        )
    stem = nn.Conv2d(channels, conv.out_channels, 7, 2, 3, bias=False,  # ResNet's stem
                     device=weight.device, dtype=weight.dtype)  # fmt: skip
    with torch.no_grad():
        stem.weight.copy_(adapted)
    return stem


def _resnet18_for(state: dict[str, Tensor], num_classes: int, meta: bool = False) -> nn.Module:
    """ResNet18 with the head and the stem `state` has (else `num_classes` and 3 channels)."""
    head = state.get("fc.weight")
    classes = head.shape[0] if isinstance(head, Tensor) and head.ndim == 2 else num_classes
    stem = state.get("conv1.weight")
    channels = stem.shape[1] if isinstance(stem, Tensor) and stem.ndim == 4 else 3
    return resnet18_on_meta(classes, channels) if meta else resnet18_for_images(classes, channels)


def _fit_problems(weights: str, net: nn.Module, state: dict[str, Tensor]) -> list[str]:
    return [
        f"model.weights={weights} does not fit ResNet18: {p}"
        for p in state_dict_mismatch(net, state)
    ]


def weights_problems(weights: str, precision: str) -> list[str]:
    """What build_resnet18 would refuse in model.weights, a file or torchvision's (not there and
    not downloadable, not loadable, not a state dict, keys or shapes that do not fit ResNet18)
    and values no run at `precision` can start from (the run stopped in its pre-training
    gradcheck, blaming autograd), found before a run starts: one read of the file, matched
    against a ResNet18 on the meta device (no memory, no init). torchvision's file is
    downloaded here if it is not in the hub cache: offline, that failed after the run had
    claimed its directory, and in a multirun after the jobs before it had trained."""
    try:
        state = (torchvision_state_dict(weights) if is_torchvision_weights(weights)
                 else read_state_dict(weights))  # fmt: skip
    except ConfigError as exc:
        return exc.problems
    problems = _fit_problems(weights, _resnet18_for(state, 1000, meta=True), state)
    bad_file = "use weights saved before they went bad"
    if is_torchvision_weights(weights):  # the cached file is not torchvision's
        bad_file = f"delete {hub_cache_file(weights)} to download it again"
        problems = [f"{p}; {bad_file}" for p in problems]
    return problems + [
        f"model.weights={weights} {what}: no run at precision={precision} can start from them; "
        + ("train at precision=32-true, whose range holds them" if other_precision else bad_file)
        for what, other_precision in unusable_values(state, precision)
    ]


class GlobalMeanPool(nn.Module):
    """ResNet's AdaptiveAvgPool2d((1, 1)) as a mean over height and width: the same values, and a
    backward CUDA runs deterministically (an expand), where torch has no deterministic CUDA
    kernel for adaptive pooling's backward and trainer.deterministic=true stopped at it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3), keepdim=True)


def resnet_features(net: ResNet, images: Tensor) -> Tensor:
    """torchvision's ResNet forward up to the head: (B, C, H, W) → (B, 512)."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
    x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
    return torch.flatten(net.avgpool(x), 1)


def compiled_forward(net: ResNet, mode: CompileMode = True) -> Callable[[Tensor], Tensor]:
    """`net`'s forward with `resnet_features` under torch.compile (its default mode for True, or
    the mode named). The head stays eager, outside the graph, so the live gradient check's
    forward hook on fc runs as plain Python (traced into the graph, it made each step 4× slower
    here)."""
    features = torch.compile(resnet_features, mode=mode if isinstance(mode, str) else None)

    def forward(images: Tensor) -> Tensor:
        return cast(Tensor, net.fc(features(net, images)))

    return forward


class ResNetClassifier(pl.LightningModule):
    """Trains `net` with `loss_fn`; the optimizer and scheduler are built by their factories."""

    def __init__(
        self,
        *,
        net: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer_factory: OptimizerFactory,
        scheduler_kwargs: dict[str, Any],
        channels_last: bool,
        compile: CompileMode = False,
        example_input_array: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.example_input_array = example_input_array  # traced for TensorBoard's graph when set
        self.net = net
        self.loss_fn = loss_fn
        self.optimizer_factory = optimizer_factory
        self.scheduler_kwargs = scheduler_kwargs
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        # The step in flight's loss and lr (read before the scheduler steps), for the loggers:
        # under gradient accumulation the sum of its window's micro-batch losses so far.
        self._step_loss: Tensor | None = None
        self._window_size = 1  # micro-batches summed in _step_loss
        self._step_lr = 0.0
        # train/loss as last kept (the mean over DDP processes): on logging steps and the run's
        # last. The progress bar's and the run's final figure (`logged_metric`).
        self.logged_loss: Tensor | None = None
        self._loss_kept = False
        # Compiled at the first forward, in the process that trains (DDP may spawn it), and kept
        # off the module's children: the checkpoint has torchvision's keys either way.
        self.compile_features = compile
        self._compiled_forward: Callable[[Tensor], Tensor] | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in PLAIN_STEP_ATTRIBUTES:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, images: Tensor) -> Tensor:
        images = images.contiguous(memory_format=self.memory_format)
        if not self.compile_features:
            return self.net(images)  # (B, num_classes)
        if self._compiled_forward is None:
            self._compiled_forward = compiled_forward(cast(ResNet, self.net), self.compile_features)
        return self._compiled_forward(images)

    def on_train_epoch_start(self) -> None:
        # Before the epoch's first batch and every callback's batch hooks: a resume at an epoch's
        # end left Lightning's logging step one ahead (logging_steps.realign_logging_step).
        realign_logging_step(self.trainer)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch  # (B, C, H, W), (B, num_classes) or (B,)
        loss = self.loss_fn(self(images), labels)
        # train/loss goes to the loggers on logging steps only (on_train_batch_end): not through
        # self.log, ~1 ms a call here (Lightning moves its result record to the value's device
        # on every call), nor reduced over DDP processes or read on the host on other steps.
        # Under accumulation the step's loss is its window's mean, as its gradient is (Lightning
        # logged the last micro-batch's: 1/k of the data; review); one add a micro-batch.
        if batch_idx % self.trainer.accumulate_grad_batches == 0 or self._step_loss is None:
            self._step_loss, self._window_size = loss.detach(), 1  # Lightning zeroes the grads here
        else:
            self._step_loss = self._step_loss + loss.detach()
            self._window_size += 1
        self._step_lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        self._loss_kept = logs_this_step(self.trainer) or is_last_step(self.trainer)
        if self._loss_kept:
            self._keep_loss()  # here, before the callbacks' batch-end hooks (the progress bar)
        return loss

    def _keep_loss(self) -> None:
        """`logged_loss`: the step's loss, its mean over DDP processes (a collective: every rank
        calls it at the same steps; on a copy, as DDP's all_reduce works in place), queued
        without a wait for the GPU (collectives.mean_over_processes)."""
        assert self._step_loss is not None  # set by training_step
        loss = (
            self._step_loss / self._window_size
            if self._window_size > 1
            else self._step_loss.clone()
        )
        # The run's processes only (a single-device fit in a process that holds a group of its
        # own reduces nothing, as Lightning's single-device strategy does not).
        self.logged_loss = mean_over_processes(loss) if self.trainer.world_size > 1 else loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Where Lightning writes the step's logs, decided after the callbacks' hooks (a stop
        request makes this step a logged one): train/loss, train/lr and the epoch (as Lightning
        writes it beside its step logs) straight to the loggers."""
        if not writes_step_logs(self.trainer):
            return
        if not self._loss_kept:  # a stop request made this step a logged one: every rank alike
            self._keep_loss()
        assert self.logged_loss is not None
        log_step_scalars(
            self.trainer,
            {TRAIN_LOSS: self.logged_loss, "train/lr": self._step_lr, "epoch": self.current_epoch},
        )

    def on_train_start(self) -> None:
        """A run continued from a checkpoint trains with its config's optimizer hyperparameters
        (Lightning has just restored the checkpoint's): pipeline.restored_optimizer."""
        if self.trainer.ckpt_path is None:
            return
        configs = self.trainer.lr_scheduler_configs
        scheduler = configs[0].scheduler if configs else None
        changes = apply_config_hyperparameters(
            self.trainer.optimizers[0], scheduler if isinstance(scheduler, LambdaLR) else None
        )
        if changes:
            rank_zero_info(changes_message(changes))

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        loss = self.loss_fn(self(images), labels)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = build_scheduler(optimizer, **self.scheduler_kwargs)
        if scheduler is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


# Lightning asks on every batch whether training_step takes batch_idx, with
# inspect.getfullargspec, which builds the signature anew each time (~11 µs a call here, hot);
# a function's __signature__ is what inspect hands back instead (~4 µs).
ResNetClassifier.training_step.__signature__ = inspect.signature(  # type: ignore[attr-defined]
    ResNetClassifier.training_step
)

"""The build step: a validated config becomes components, each given typed keyword arguments.

It reads the config through settings.settings_of (typed, frozen: a misspelt key is a mypy
error); nothing after this module reads the config object.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, OmegaConf

from pipeline import loggers
from pipeline.callbacks import (
    AnalyticGradientCheck,
    CudaFlags,
    GpuMemory,
    GracefulStop,
    GradientLogger,
    GradientNoiseScale,
    NonFiniteGuard,
    ProgressBar,
    RunConfigInCheckpoint,
    RunSummary,
    StepGradNorms,
    Throughput,
    TimedCheckpoint,
)
from pipeline.callbacks.inherited_hooks import skip_idle_batch_hooks
from pipeline.callbacks.model_summary import RichSummaryWithFlops, SummaryWithFlops
from pipeline.callbacks.step_checkpoint import StepAndEpochCheckpoint
from pipeline.callbacks.step_scalar_writer import StepScalarWriter
from pipeline.checkpoint_io import AtomicCheckpointIO
from pipeline.data import SyntheticDataModule
from pipeline.devices import is_cuda_run
from pipeline.hparams import compared_hparams
from pipeline.layout import CHECKPOINT_DIR, LAST_CHECKPOINT_NAME, PROFILE_DIR
from pipeline.losses import LOSSES
from pipeline.model import GlobalMeanPool, ResNetClassifier, build_resnet18
from pipeline.override_checks import optimizer_class_arguments
from pipeline.profiling import TorchProfile, lightning_profiler
from pipeline.resources import forward_flops
from pipeline.settings import DeviceSettings, RunSettings, resolved, settings_of


def uses_cuda(cfg: DictConfig | RunSettings) -> bool:
    """Whether the run's accelerator resolves to CUDA on this machine (devices.is_cuda_run)."""
    s = _settings(cfg)
    return is_cuda_run(s.device.accelerator, torch.cuda.is_available())


def run_device(cfg: DictConfig) -> torch.device:
    """The device a single-process run trains on."""
    return torch.device("cuda" if uses_cuda(cfg) else "cpu")


def num_workers(cfg: DictConfig | RunSettings) -> int:
    """data.num_workers, with auto resolved to 0: the loader yields sample indices only, and the
    images are made on the run's device, so a worker process would have nothing to do."""
    workers = _settings(cfg).data.num_workers
    return 0 if workers == "auto" else workers


def channels_last(cfg: DictConfig | RunSettings) -> bool:
    """model.channels_last, with auto resolved: on for CUDA (where NHWC usually wins with mixed
    precision), off on a CPU (no faster on this 2-core EPYC)."""
    s = _settings(cfg)
    value = s.model.channels_last
    return uses_cuda(s) if value == "auto" else value


def optimizer_factory(cfg: DictConfig | RunSettings) -> Any:
    """cfg.optimizer as a partial awaiting the parameters, with optimizer.fused=auto resolved:
    fused on CUDA where the class has a fused implementation (one kernel updates every
    parameter, and the non-finite guard can skip a step on the device instead of waiting for
    it), torch's own choice elsewhere (optimizer=adam optimizer._target_=torch.optim.NAdam: no
    fused implementation, so auto is torch's choice), and under 16-mixed on CUDA: there
    Lightning leaves a fused step to unscale the GradScaler's gradients in its kernel, after the
    instruments have read them scaled (and the guard cannot defer beside a GradScaler)."""
    s = _settings(cfg)
    options = dict(s.optimizer)
    fused = options.pop("fused", None)  # absent: an optimizer without a fused implementation
    if fused == "auto":
        has_fused = "fused" in optimizer_class_arguments(str(options["_target_"]))
        grad_scaler = s.precision == "16-mixed"  # on CUDA: on a CPU it runs as bf16-mixed
        fused = True if uses_cuda(s) and has_fused and not grad_scaler else None
    if fused is not None:
        options["fused"] = fused
    return instantiate(options)


def cuda_flag_settings(cfg: DictConfig | RunSettings) -> dict[str, Any]:
    """The run's CUDA flags; trainer.deterministic=true wins over benchmarking (which picks
    convolution algorithms by speed)."""
    s = _settings(cfg)
    return {
        "cudnn_benchmark": s.device.cudnn_benchmark and not s.deterministic,
        "tf32": s.device.tf32,
    }


def build_datamodule(cfg: DictConfig) -> SyntheticDataModule:
    s = settings_of(cfg)
    return SyntheticDataModule(
        **(dataclasses.asdict(s.data) | {"num_workers": num_workers(s)}),
        num_classes=s.model.num_classes,
        label_kind=LOSSES[s.loss].label_kind,
        seed=s.seed,
    )


def build_module(cfg: DictConfig) -> ResNetClassifier:
    s = settings_of(cfg)
    net = build_resnet18(
        weights=s.model.weights, num_classes=s.model.num_classes, channels=s.data.channels
    )
    if s.deterministic and uses_cuda(s):  # torch refuses adaptive pooling's CUDA backward there
        net.avgpool = GlobalMeanPool()
    return ResNetClassifier(
        net=net,
        loss_fn=LOSSES[s.loss].fn,
        optimizer_factory=optimizer_factory(s),
        scheduler_kwargs=s.scheduler,
        channels_last=channels_last(s),
        compile=s.model.compile,
        example_input_array=example_input(s)
        if "tensorboard" in s.logger and s.logger["tensorboard"]["log_graph"]
        else None,
    )


def example_input(s: RunSettings) -> torch.Tensor:
    """One image of the run's shape, (1, C, H, W): what the graph is traced with."""
    return torch.zeros(1, s.data.channels, s.data.image_size, s.data.image_size)


def build_loggers(cfg: DictConfig | RunSettings, run_dir: Path) -> list[Logger]:
    """The loggers the `logger` group chose (pipeline/loggers.py); none for logger=none."""
    return loggers.build_loggers(_settings(cfg).logger, run_dir)


def build_callbacks(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()
) -> list[Callback]:
    """The pipeline's callbacks; `overrides` (the command line's) add columns to the HParams table."""
    s = settings_of(cfg)
    ckpt_dir = run_dir / CHECKPOINT_DIR
    policy = s.callbacks.checkpoint
    resolved_cfg = resolved(cfg)  # the whole run's config, for the checkpoint and TensorBoard
    callbacks: list[Callback] = [
        # First: its hooks write the steps' scalars before the others' hooks read them (the
        # progress bar's train/loss at the end) or the run ends.
        StepScalarWriter(),
        # The kept step files first: last.ckpt, saved after them at a step, then holds their
        # state with this step's file in it, so a resume deletes it in its turn.
        *kept_checkpoints(ckpt_dir, policy.keep_last_k, policy.every_n_steps),
        StepAndEpochCheckpoint(
            dirpath=ckpt_dir,
            filename="last",
            save_last=False,
            save_top_k=1,
            every_n_train_steps=policy.every_n_steps or None,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
        *(
            [
                TimedCheckpoint(
                    checkpoint_path=ckpt_dir / LAST_CHECKPOINT_NAME,
                    every_n_minutes=policy.every_n_minutes,
                )
            ]
            if policy.every_n_minutes
            else []
        ),
        RunConfigInCheckpoint(resolved_cfg),
        GracefulStop(checkpoint_path=ckpt_dir / LAST_CHECKPOINT_NAME),
        RunSummary(
            hparams=compared_hparams(resolved_cfg, overrides),
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        ),
        Throughput(compile=s.model.compile is not False, forward_flops_per_image=image_flops(s)),
    ]
    if uses_cuda(s):
        callbacks += [CudaFlags(**cuda_flag_settings(s)), GpuMemory()]
    return callbacks + instruments(s, ckpt_dir) + model_summary(s) + torch_profile(s, run_dir)


def model_summary(s: RunSettings) -> list[Callback]:
    """Lightning's model summary (rich beside the progress bar, as Lightning chooses), with one
    image's forward FLOPs; none when trainer.enable_model_summary=false."""
    if s.trainer.get("enable_model_summary") is False:
        return []
    summary = RichSummaryWithFlops if s.callbacks.progress_bar else SummaryWithFlops
    return [summary(flops=image_flops(s))]


def image_flops(s: RunSettings) -> int:
    """FLOPs of ResNet18's forward pass over one image of the run (counted once a process)."""
    return forward_flops(num_classes=s.model.num_classes, batch_size=1,
                         channels=s.data.channels, image_size=s.data.image_size)  # fmt: skip


def instruments(s: RunSettings, ckpt_dir: Path) -> list[Callback]:
    """The guard, the gradient instruments, the analytic check and the progress bar."""
    callbacks: list[Callback] = []
    grad_norms = StepGradNorms()  # one pass over the gradients a step for the guard and logger
    if s.detect_nonfinite != "off":
        callbacks.append(
            NonFiniteGuard(
                mode=s.detect_nonfinite,
                loss_name=s.loss,
                checkpoint_path=ckpt_dir / LAST_CHECKPOINT_NAME,
                grad_norms=grad_norms,
            )
        )
    gradients = s.callbacks.gradients
    if gradients.enabled:
        callbacks.append(
            GradientLogger(
                histogram_every_n_steps=gradients.histogram_every_n_steps, grad_norms=grad_norms
            )
        )
        if gradients.noise_scale in ("auto", "on"):
            callbacks.append(
                GradientNoiseScale(
                    ema_decay=gradients.noise_scale_ema_decay,
                    halves=gradients.noise_scale == "on",
                )
            )
    check = s.callbacks.gradient_check
    if check.enabled:
        callbacks.append(
            AnalyticGradientCheck(
                loss=LOSSES[s.loss],
                precision=s.precision,
                every_n_steps=check.every_n_steps,
                on_fail=check.on_fail,
                seed=s.seed,
                tf32=uses_cuda(s) and s.device.tf32 is True,
            )
        )
    if s.callbacks.progress_bar:
        callbacks.append(ProgressBar(leave=True))
    return callbacks


def torch_profile(s: RunSettings, run_dir: Path) -> list[Callback]:
    """profiler=torch: torch.profiler over the scheduled optimizer steps, into <run>/profile/."""
    if s.profiler["name"] != "torch":
        return []
    keys = {k: v for k, v in s.profiler.items() if k != "name"}
    return [TorchProfile(profile_dir=run_dir / PROFILE_DIR, **keys, cuda=uses_cuda(s))]


def kept_checkpoints(ckpt_dir: Path, keep_last_k: int, every_n_steps: int) -> list[Callback]:
    """The `keep_last_k` newest checkpoints as step-NNNNNN.ckpt beside last.ckpt, saved when the
    step-based one is (and at each epoch's end); older ones are deleted. Empty when 0."""
    if not keep_last_k:
        return []
    return [
        StepAndEpochCheckpoint(
            dirpath=ckpt_dir,
            filename="step-{step:06d}",
            auto_insert_metric_name=False,
            monitor="step",  # the newest K: top K by step
            mode="max",
            save_top_k=keep_last_k,
            every_n_train_steps=every_n_steps or None,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
    ]


def build_strategy(device: DeviceSettings, in_sweep: bool) -> str | DDPStrategy:
    """Lightning's strategy. DDP gets the collective timeout; in a Hydra sweep it spawns its
    processes, because Lightning cannot re-launch the command of a multirun job."""
    if device.ddp is None:
        return device.strategy
    return DDPStrategy(
        start_method="spawn" if in_sweep else "popen",
        timeout=timedelta(seconds=device.ddp.timeout_s),
        gradient_as_bucket_view=device.ddp.gradient_as_bucket_view,
        static_graph=device.ddp.static_graph,
    )


def _settings(cfg: DictConfig | RunSettings) -> RunSettings:
    return cfg if isinstance(cfg, RunSettings) else settings_of(cfg)


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    extra_callbacks: Sequence[Callback] = (),
    in_sweep: bool = False,
    overrides: Sequence[str] = (),
    last_callbacks: Sequence[Callback] = (),
) -> pl.Trainer:
    """The Trainer; `extra_callbacks` run before the pipeline's own (benchmarks, tests) and
    `last_callbacks` after them (but Lightning's checkpoint callbacks, which it puts last);
    `overrides`, the command line's, name the HParams table's extra columns."""
    s = settings_of(cfg)
    device = s.device
    trainer = pl.Trainer(
        accelerator=device.accelerator,
        devices=device.devices,
        strategy=build_strategy(device, in_sweep),
        num_nodes=device.num_nodes,
        sync_batchnorm=device.sync_batchnorm,
        precision=s.precision,  # type: ignore[arg-type]  # validated against Lightning's strings
        logger=build_loggers(s, run_dir) or False,
        callbacks=[*extra_callbacks, *build_callbacks(cfg, run_dir, overrides), *last_callbacks],
        enable_progress_bar=s.callbacks.progress_bar,
        plugins=[AtomicCheckpointIO()],
        profiler=lightning_profiler(s.profiler["name"], run_dir / PROFILE_DIR),
        default_root_dir=run_dir,
        **s.trainer,
    )
    skip_idle_batch_hooks(trainer.callbacks)  # type: ignore[attr-defined]
    return trainer

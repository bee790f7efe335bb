"""The build step: a validated config becomes components, each given typed keyword arguments.

Nothing after this module reads the config object.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
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
from pipeline.checkpoint_io import AtomicCheckpointIO
from pipeline.config import PIPELINE_TRAINER_KEYS
from pipeline.data import SyntheticDataModule
from pipeline.devices import is_cuda_run
from pipeline.hparams import compared_hparams
from pipeline.layout import CHECKPOINT_DIR, LAST_CHECKPOINT_NAME, PROFILE_DIR
from pipeline.losses import LOSSES
from pipeline.model import ResNetClassifier, build_resnet18
from pipeline.profiling import TorchProfile, lightning_profiler


def resolved_dict(node: DictConfig) -> dict[str, Any]:
    """A config node as a dict of Python values, interpolations resolved: what components get."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def uses_cuda(cfg: DictConfig) -> bool:
    """Whether the run's accelerator resolves to CUDA on this machine (devices.is_cuda_run)."""
    return is_cuda_run(cfg.device.accelerator, torch.cuda.is_available())


def run_device(cfg: DictConfig) -> torch.device:
    """The device a single-process run trains on."""
    return torch.device("cuda" if uses_cuda(cfg) else "cpu")


def num_workers(cfg: DictConfig) -> int:
    """data.num_workers, with auto resolved to 0: the loader yields sample indices only, and the
    images are made on the run's device, so a worker process would have nothing to do."""
    return 0 if cfg.data.num_workers == "auto" else int(cfg.data.num_workers)


def channels_last(cfg: DictConfig) -> bool:
    """model.channels_last, with auto resolved: on for CUDA (where NHWC usually wins with mixed
    precision), off on a CPU (no faster on this 2-core EPYC)."""
    value = cfg.model.get("channels_last", False)  # absent in older runs' configs
    return uses_cuda(cfg) if value == "auto" else bool(value)


def optimizer_factory(cfg: DictConfig) -> Any:
    """cfg.optimizer as a partial awaiting the parameters, with optimizer.fused=auto resolved:
    fused on CUDA (one kernel updates every parameter, and the non-finite guard can skip a step
    on the device instead of waiting for it), torch's own choice elsewhere."""
    options = OmegaConf.to_container(cfg.optimizer, resolve=True)
    assert isinstance(options, dict)
    fused = options.pop("fused", None)
    if fused == "auto":
        fused = True if uses_cuda(cfg) else None
    if fused is not None:
        options["fused"] = fused
    return instantiate(options)


def cuda_flag_settings(cfg: DictConfig) -> dict[str, Any]:
    """The run's CUDA flags; trainer.deterministic=true wins over benchmarking (which picks
    convolution algorithms by speed)."""
    return {
        "cudnn_benchmark": bool(cfg.device.get("cudnn_benchmark", False))
        and not cfg.trainer.deterministic,
        "tf32": cfg.device.get("tf32"),
    }


def build_datamodule(cfg: DictConfig) -> SyntheticDataModule:
    return SyntheticDataModule(
        # data.compile is absent in older runs' configs: those made their samples eagerly
        **({"compile": False} | resolved_dict(cfg.data) | {"num_workers": num_workers(cfg)}),
        num_classes=cfg.model.num_classes,
        label_kind=LOSSES[cfg.loss.name].label_kind,
        seed=cfg.seed,
    )


def build_module(cfg: DictConfig) -> ResNetClassifier:
    scheduler = resolved_dict(cfg.scheduler)
    return ResNetClassifier(
        net=build_resnet18(weights=cfg.model.weights, num_classes=cfg.model.num_classes),
        loss_fn=LOSSES[cfg.loss.name].fn,
        optimizer_factory=optimizer_factory(cfg),
        scheduler_kwargs=scheduler,
        channels_last=channels_last(cfg),
        compile=bool(cfg.model.get("compile", False)),  # absent in older runs' configs
        example_input_array=example_input(cfg)
        if "tensorboard" in cfg.logger and cfg.logger.tensorboard.log_graph
        else None,
    )


def example_input(cfg: DictConfig) -> torch.Tensor:
    """One image of the run's shape, (1, C, H, W): what the graph is traced with."""
    return torch.zeros(1, cfg.data.channels, cfg.data.image_size, cfg.data.image_size)


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """The loggers the `logger` group chose (pipeline/loggers.py); none for logger=none."""
    return loggers.build_loggers(resolved_dict(cfg.logger), run_dir)


def build_callbacks(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()
) -> list[Callback]:
    """The pipeline's callbacks; `overrides` (the command line's) add columns to the HParams table."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    policy = cfg.callbacks.checkpoint
    every = policy.every_n_steps
    resolved = resolved_dict(cfg)  # the whole run's config, for the checkpoint and TensorBoard
    callbacks: list[Callback] = [
        ModelCheckpoint(
            dirpath=ckpt_dir,
            filename="last",
            save_last=False,
            save_top_k=1,
            every_n_train_steps=every or None,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        ),
        *(
            [
                TimedCheckpoint(
                    checkpoint_path=ckpt_dir / LAST_CHECKPOINT_NAME, every_n_minutes=minutes
                )
            ]
            if (minutes := policy.every_n_minutes)
            else []
        ),
        *kept_checkpoints(ckpt_dir, policy.keep_last_k, every),
        RunConfigInCheckpoint(resolved),
        GracefulStop(checkpoint_path=ckpt_dir / LAST_CHECKPOINT_NAME),
        RunSummary(
            hparams=compared_hparams(resolved, overrides),
            config_yaml=OmegaConf.to_yaml(cfg, resolve=True),
        ),
        Throughput(compile=bool(cfg.model.get("compile", False))),
    ]
    if uses_cuda(cfg):
        callbacks += [CudaFlags(**cuda_flag_settings(cfg)), GpuMemory()]
    grad_norms = StepGradNorms()  # one pass over the gradients a step for the guard and logger
    if cfg.trainer.detect_nonfinite != "off":
        callbacks.append(
            NonFiniteGuard(
                mode=cfg.trainer.detect_nonfinite,
                loss_name=cfg.loss.name,
                checkpoint_path=ckpt_dir / LAST_CHECKPOINT_NAME,
                grad_norms=grad_norms,
            )
        )
    if cfg.callbacks.gradients.enabled:
        callbacks.append(
            GradientLogger(
                histogram_every_n_steps=cfg.callbacks.gradients.histogram_every_n_steps,
                grad_norms=grad_norms,
            )
        )
        if cfg.callbacks.gradients.noise_scale in ("auto", "on"):
            callbacks.append(
                GradientNoiseScale(
                    ema_decay=cfg.callbacks.gradients.noise_scale_ema_decay,
                    halves=cfg.callbacks.gradients.noise_scale == "on",
                )
            )
    check = cfg.callbacks.gradient_check
    if check.enabled:
        callbacks.append(
            AnalyticGradientCheck(
                loss=LOSSES[cfg.loss.name],
                precision=cfg.precision,
                every_n_steps=check.every_n_steps,
                on_fail=check.on_fail,
                seed=cfg.seed,
                tf32=uses_cuda(cfg) and cuda_flag_settings(cfg)["tf32"] is True,
            )
        )
    if cfg.callbacks.progress_bar:
        callbacks.append(ProgressBar(leave=True))
    return callbacks + torch_profile(cfg, run_dir)


def torch_profile(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """profiler=torch: torch.profiler over the scheduled optimizer steps, into <run>/profile/."""
    if cfg.profiler.name != "torch":
        return []
    keys = resolved_dict(cfg.profiler)
    del keys["name"]
    return [TorchProfile(profile_dir=run_dir / PROFILE_DIR, **keys, cuda=uses_cuda(cfg))]


def kept_checkpoints(ckpt_dir: Path, keep_last_k: int, every_n_steps: int) -> list[Callback]:
    """The `keep_last_k` newest checkpoints as step-NNNNNN.ckpt beside last.ckpt, saved when the
    step-based one is (and at each epoch's end); older ones are deleted. Empty when 0."""
    if not keep_last_k:
        return []
    return [
        ModelCheckpoint(
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


def build_strategy(device: DictConfig, in_sweep: bool) -> str | DDPStrategy:
    """Lightning's strategy. DDP gets the collective timeout; in a Hydra sweep it spawns its
    processes, because Lightning cannot re-launch the command of a multirun job."""
    if device.strategy != "ddp":
        return str(device.strategy)
    return DDPStrategy(
        start_method="spawn" if in_sweep else "popen",
        timeout=timedelta(seconds=device.timeout_s),
        gradient_as_bucket_view=bool(device.get("gradient_as_bucket_view", False)),
        static_graph=bool(device.get("static_graph", False)),
    )


def build_trainer(
    cfg: DictConfig,
    run_dir: Path,
    extra_callbacks: Sequence[Callback] = (),
    in_sweep: bool = False,
    overrides: Sequence[str] = (),
) -> pl.Trainer:
    """The Trainer; `extra_callbacks` run before the pipeline's own (benchmarks, tests);
    `overrides`, the command line's, name the HParams table's extra columns."""
    trainer_args = {
        k: v for k, v in resolved_dict(cfg.trainer).items() if k not in PIPELINE_TRAINER_KEYS
    }
    device = cfg.device
    return pl.Trainer(
        accelerator=device.accelerator,
        devices=device.devices,
        strategy=build_strategy(device, in_sweep),
        num_nodes=device.num_nodes,
        sync_batchnorm=device.sync_batchnorm,
        precision=cfg.precision,
        logger=build_loggers(cfg, run_dir) or False,
        callbacks=[*extra_callbacks, *build_callbacks(cfg, run_dir, overrides)],
        enable_progress_bar=cfg.callbacks.progress_bar,
        plugins=[AtomicCheckpointIO()],
        profiler=lightning_profiler(cfg.profiler.name, run_dir / PROFILE_DIR),
        default_root_dir=run_dir,
        **trainer_args,
    )

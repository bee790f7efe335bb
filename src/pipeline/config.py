"""Where the configs live, and validation: every user mistake in a composed config, found at once.

`validate(cfg)` returns one line per problem — the key, the value given, what is allowed, the
fix — and is run for every job before any heavy work. Hydra's own composition errors (unknown
group option, unknown key) are caught earlier, in cli.py, in the same style.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class
from lightning.pytorch import Trainer
from omegaconf import DictConfig, OmegaConf

from pipeline import config_limits
from pipeline.checkpoints import checkpoint_fit_problems, read_checkpoint, run_config_of
from pipeline.devices import cpu_has_native_bf16, is_cpu_run, is_cuda_run
from pipeline.errors import ConfigError
from pipeline.geometry import min_image_size, resnet_final_size
from pipeline.loggers import MLFLOW_MODULES, logger_problems, missing_modules
from pipeline.sample_hash import missing_cpu_compiler
from pipeline.weights import is_torchvision_weights

_ABSENT = object()

PRECISIONS = (
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
)
BF16_ON_CPU_PRECISIONS = ("bf16-mixed", "bf16-true", "16-mixed")  # 16-mixed runs as bf16 on a CPU
NONFINITE_MODES = ("raise", "warn", "off")
SCHEDULERS = ("none", "cosine", "step")
# Trainer arguments the pipeline sets from its own groups; trainer.X for these is refused.
OWNED_TRAINER_ARGS = {
    "accelerator": "device=…",
    "devices": "device.devices=N",
    "strategy": "device=ddp or device=ddp_cpu",
    "num_nodes": "device.num_nodes=N",
    "sync_batchnorm": "device.sync_batchnorm=true",
    "precision": "precision=…",
    "logger": "logger=tensorboard|csv|mlflow|none, or a list: logger=[tensorboard,csv]",
    "profiler": "profiler=torch|simple|none",
    "callbacks": "the callbacks group",
    "enable_checkpointing": "the callbacks group",
    "enable_progress_bar": "callbacks.progress_bar=false",
    "default_root_dir": "hydra.run.dir=…",
}
PIPELINE_TRAINER_KEYS = ("detect_nonfinite",)  # ours, popped before lightning.Trainer sees them


def trainer_arguments() -> set[str]:
    """The keyword arguments lightning.Trainer takes."""
    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


class _Checker:
    """Collects problems; each check names the key, the value, what is allowed and the fix."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.problems: list[str] = []

    def value(self, key: str) -> Any:
        return OmegaConf.select(self.cfg, key, throw_on_missing=False)

    def int_at_least(self, key: str, low: int, fix: int, high: int | None = None) -> bool:
        v = self.value(key)
        allowed = f"≥ {low}" if high is None else f"in [{low}, {high}]"
        if not _is_int(v):
            self.problems.append(f"{key} must be an integer {allowed} (got {v!r}); set {key}={fix}")
            return False
        if v < low or (high is not None and v > high):
            self.problems.append(f"{key} must be {allowed} (got {v}); set {key}={fix}")
            return False
        return True

    def positive_number(self, key: str, fix: str) -> None:
        v = self.value(key)
        if not _is_number(v) or v <= 0:
            self.problems.append(f"{key} must be a number > 0 (got {v!r}); set {key}={fix}")

    def one_of(self, key: str, allowed: tuple[str, ...], fix: str) -> bool:
        v = self.value(key)
        if v not in allowed:
            self.problems.append(
                f"{key} must be one of {', '.join(allowed)} (got {v!r}); set {key}={fix}"
            )
            return False
        return True


def validate(cfg: DictConfig, *, cuda_available: bool | None = None) -> list[str]:
    """Every problem in a composed train config, one line each; empty when it can run."""
    c = _Checker(cfg)
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()

    c.int_at_least("seed", 0, 42, high=config_limits.NUMPY_SEED_MAX)
    c.positive_number("optimizer.lr", "1e-3")
    _validate_fused(c)
    _validate_optimizer_keys(c)

    _validate_data(c, cuda_available)
    _validate_model(c)

    c.one_of("precision", PRECISIONS, "32-true")

    _validate_callbacks(c)
    _validate_device(c, cuda_available)
    _validate_scheduler(c)
    _validate_trainer(c)
    _validate_profiler(c)
    loggers = c.value("logger") or {}
    c.problems += logger_problems(
        loggers, missing_modules(MLFLOW_MODULES) if "mlflow" in loggers else []
    )
    c.problems += [  # keys with no range of their own (seed has one)
        p for p in config_limits.number_problems(cfg) if not p.startswith("seed")
    ]
    if not c.problems:  # the estimate needs sane sizes, a precision and a device
        c.problems += config_limits.memory_problems(
            cfg, cuda=is_cuda_run(c.value("device.accelerator"), cuda_available)
        )
    ckpt = c.value("ckpt_path")
    if ckpt is not None:
        c.problems += checkpoint_problems(str(ckpt), cfg)
    return c.problems


def _validate_data(c: _Checker, cuda_available: bool) -> None:
    """data.*: sizes and counts, and what they leave for BatchNorm and the last batch."""
    sizes_ok = c.int_at_least("data.image_size", 1, 64) & c.int_at_least("data.batch_size", 1, 32)
    c.int_at_least("data.channels", 1, 3)
    c.int_at_least("data.num_samples", 1, 512)
    c.int_at_least("data.num_val_samples", 1, 128)
    if c.value("data.num_workers") != "auto":
        c.int_at_least("data.num_workers", 0, 0)
    _validate_data_compile(c)
    if sizes_ok:
        size, batch = c.value("data.image_size"), c.value("data.batch_size")
        if batch * resnet_final_size(size) ** 2 < 2:
            c.problems.append(
                f"data.image_size={size} with data.batch_size={batch} leaves 1 value per channel in "
                f"ResNet18's last BatchNorm (training needs > 1); set data.image_size={min_image_size(batch)} "
                "or more, or data.batch_size=2 or more"
            )
        elif _is_int(c.value("data.num_samples")) and c.value("data.num_samples") >= 1:
            c.problems += config_limits.last_batch_problems(
                num_samples=c.value("data.num_samples"),
                batch_size=batch,
                image_size=size,
                world_size=config_limits.processes(
                    c.cfg, torch.cuda.device_count() if cuda_available else 0
                ),
            )


def _validate_data_compile(c: _Checker) -> None:
    """data.compile: auto, true or false (absent in an older run's config); true on a CPU needs
    the C++ compiler torch.compile builds CPU kernels with."""
    if OmegaConf.select(c.cfg, "data.compile", default=_ABSENT) is _ABSENT:
        return
    mode = c.value("data.compile")
    if not (isinstance(mode, bool) or mode == "auto"):  # not 1 or 0, which equal True and False
        c.problems.append(
            f"data.compile must be true, false or auto (got {mode!r}); set data.compile=auto"
        )
    elif mode is True and is_cpu_run(c.value("device.accelerator"), torch.cuda.is_available()):
        missing = missing_cpu_compiler()
        if missing:
            c.problems.append(
                f"data.compile=true: torch.compile finds no C++ compiler on this machine "
                f"({missing}); install one (g++) or set data.compile=false (the same samples, made eagerly)"
            )


def _validate_model(c: _Checker) -> None:
    """model.*: classes (against the loss), memory format, compile, weights."""
    classes_ok = c.int_at_least("model.num_classes", 1, 1000)
    if classes_ok and c.value("loss.name") == "cross_entropy" and c.value("model.num_classes") < 2:
        c.problems.append(
            f"loss=cross_entropy needs model.num_classes ≥ 2 (got {c.value('model.num_classes')}); "
            "set model.num_classes=10"
        )
    if c.value("model.channels_last") not in (True, False, "auto"):
        c.problems.append(
            f"model.channels_last must be true, false or auto (got {c.value('model.channels_last')!r}); "
            "set model.channels_last=auto"
        )
    if not isinstance(c.value("model.compile"), bool):
        c.problems.append(
            f"model.compile must be true or false (got {c.value('model.compile')!r}); set model.compile=false"
        )
    weights = c.value("model.weights")
    if weights is not None and not isinstance(weights, str):
        c.problems.append(f"model.weights must be null, DEFAULT or a file path (got {weights!r})")
    elif (
        isinstance(weights, str)
        and not is_torchvision_weights(weights)
        and not Path(weights).expanduser().is_file()
    ):
        c.problems.append(
            f"model.weights={weights} is not a file; give a state-dict path, DEFAULT, or model.weights=null"
        )


def _validate_callbacks(c: _Checker) -> None:
    """callbacks.*: checkpoint policy, gradient instruments, the analytic check."""
    c.int_at_least("callbacks.checkpoint.every_n_steps", 0, 0)
    c.int_at_least("callbacks.checkpoint.keep_last_k", 0, 0)
    minutes = c.value("callbacks.checkpoint.every_n_minutes")
    if not _is_number(minutes) or minutes < 0:
        c.problems.append(
            f"callbacks.checkpoint.every_n_minutes must be a number ≥ 0 (got {minutes!r}; 0: off); "
            "set callbacks.checkpoint.every_n_minutes=10"
        )
    c.int_at_least("callbacks.gradients.histogram_every_n_steps", 0, 100)
    noise = c.value("callbacks.gradients.noise_scale")
    if noise not in ("auto", "on", "off"):
        quote = (
            " (YAML reads an unquoted off as false: quote it)" if isinstance(noise, bool) else ""
        )
        c.problems.append(
            f"callbacks.gradients.noise_scale must be auto, on or off (got {noise!r}){quote}; "
            "set callbacks.gradients.noise_scale=auto"
        )
    decay = c.value("callbacks.gradients.noise_scale_ema_decay")
    if not (_is_number(decay) and 0 <= decay < 1):
        c.problems.append(
            f"callbacks.gradients.noise_scale_ema_decay must be a number in [0, 1) (got {decay!r}); "
            "set callbacks.gradients.noise_scale_ema_decay=0.95"
        )
    c.int_at_least("callbacks.gradient_check.every_n_steps", 0, 50)
    c.one_of("callbacks.gradient_check.on_fail", ("raise", "warn"), "raise")


def checkpoint_problems(path: str, cfg: DictConfig | None = None) -> list[str]:
    """Why `path` cannot be resumed from (with `cfg`) or evaluated, if it cannot."""
    try:
        ckpt = read_checkpoint(path)
        saved = run_config_of(ckpt, path)
    except ConfigError as exc:
        return exc.problems
    return [] if cfg is None else checkpoint_fit_problems(ckpt, saved, cfg, path)


def _validate_device(c: _Checker, cuda_available: bool) -> None:
    accel = c.value("device.accelerator")
    name = c.value("device.name")
    if accel == "gpu" and not cuda_available:
        c.problems.append(
            f"device={name} needs a CUDA GPU, but torch sees none (torch.cuda.is_available() is False); "
            "set device=cpu, device=auto or device=ddp_cpu"
        )
    devices = c.value("device.devices")
    if not (_is_int(devices) and (devices >= 1 or devices == -1)):
        c.problems.append(
            f"device.devices must be an integer ≥ 1, or -1 for all GPUs (got {devices!r}); set device.devices=2"
        )
    c.int_at_least("device.num_nodes", 1, 1)
    if c.value("device.strategy") == "ddp":
        c.int_at_least("device.timeout_s", 1, 300)
    if c.value("device.sync_batchnorm") is True and accel == "cpu":
        c.problems.append(
            f"device.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only; got device={name}); "
            "set device.sync_batchnorm=false"
        )
    flags = ["device.sync_batchnorm", "device.cudnn_benchmark"]
    if c.value("device.strategy") == "ddp":
        flags += ["device.gradient_as_bucket_view", "device.static_graph"]
    for key in flags:
        if not isinstance(c.value(key), bool):
            c.problems.append(
                f"{key} must be true or false (got {c.value(key)!r}); set {key}=false"
            )
    if c.value("device.tf32") not in (None, True, False):
        c.problems.append(
            f"device.tf32 must be null, true or false (got {c.value('device.tf32')!r}); set device.tf32=null"
        )


def _validate_fused(c: _Checker) -> None:
    fused = c.value("optimizer.fused")
    if fused is None:
        return
    if fused not in ("auto", True, False):
        c.problems.append(
            f"optimizer.fused must be auto, true or false (got {fused!r}); set optimizer.fused=auto"
        )
        return
    if "fused" not in optimizer_arguments(c.value("optimizer._target_")):
        c.problems.append(
            f"optimizer.fused={str(fused).lower()}: {c.value('optimizer._target_')} has no fused implementation; "
            "drop the key: ~optimizer.fused"
        )


def optimizer_arguments(target: str) -> set[str]:
    """The keyword arguments of the optimizer class `target` names (all accepted if unknown:
    an unknown _target_ fails where it is instantiated, with its own message)."""
    try:
        return set(inspect.signature(get_class(target)).parameters)
    except Exception:
        return {"fused"}


def _validate_optimizer_keys(c: _Checker) -> None:
    """Every optimizer.X (but fused, checked on its own) is an argument of the optimizer class."""
    target = str(c.value("optimizer._target_"))
    known = optimizer_arguments(target)
    if known == {"fused"}:
        return
    for key in c.value("optimizer") or {}:
        if str(key) not in (*known, "_target_", "_partial_", "fused"):
            c.problems.append(
                f"optimizer.{key}: {target} takes no argument {key} (it takes: "
                f"{', '.join(sorted(known - {'params'}))}); drop it: ~optimizer.{key}"
            )


def _validate_scheduler(c: _Checker) -> None:
    if not c.one_of("scheduler.name", SCHEDULERS, "none"):
        return
    name = c.value("scheduler.name")
    if name == "none":
        return
    c.int_at_least("scheduler.warmup_steps", 0, 0)
    if name == "cosine":
        total = c.value("scheduler.total_steps")
        if not _is_int(total) or total < 1:
            c.problems.append(
                f"scheduler.total_steps must be an integer ≥ 1 (got {total!r}); set trainer.max_steps=N "
                "or scheduler.total_steps=N"
            )
        ratio = c.value("scheduler.min_lr_ratio")
        if not _is_number(ratio) or not 0 <= ratio <= 1:
            c.problems.append(
                f"scheduler.min_lr_ratio must be in [0, 1] (got {ratio!r}); set scheduler.min_lr_ratio=0"
            )
    if name == "step":
        c.int_at_least("scheduler.step_size", 1, 10)
        gamma = c.value("scheduler.gamma")
        if not _is_number(gamma) or not 0 < gamma <= 1:
            c.problems.append(
                f"scheduler.gamma must be in (0, 1] (got {gamma!r}); set scheduler.gamma=0.5"
            )


def _validate_profiler(c: _Checker) -> None:
    """profiler=torch: its schedule fits in the run (steps counted from this process's start)."""
    if c.value("profiler.name") != "torch":
        return
    ok = c.int_at_least("profiler.skip_first", 0, 5) & c.int_at_least("profiler.warmup", 0, 1)
    ok &= c.int_at_least("profiler.active", 1, 3)
    c.int_at_least("profiler.row_limit", 1, 20)
    max_steps = c.value("trainer.max_steps")
    if ok and _is_int(max_steps) and max_steps >= 1:
        wanted = sum(c.value(f"profiler.{k}") for k in ("skip_first", "warmup", "active"))
        if wanted > max_steps:
            c.problems.append(
                f"profiler.skip_first + warmup + active = {wanted} steps, more than trainer.max_steps="
                f"{max_steps}; set trainer.max_steps={wanted} or profile fewer steps"
            )


def _validate_trainer(c: _Checker) -> None:
    trainer = c.value("trainer")
    if not isinstance(trainer, DictConfig):
        c.problems.append("trainer must be a mapping of lightning.Trainer arguments")
        return
    known = trainer_arguments()
    problems_before = len(c.problems)
    for key in trainer:
        key = str(key)
        if key in PIPELINE_TRAINER_KEYS:
            continue
        if key in OWNED_TRAINER_ARGS:
            c.problems.append(
                f"trainer.{key} is set by the pipeline; use {OWNED_TRAINER_ARGS[key]} instead"
            )
        elif key not in known:
            close = [k for k in sorted(known) if k.startswith(key[:4])][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            c.problems.append(
                f"trainer.{key} is not a lightning.Trainer argument{hint}; remove it or fix the spelling"
            )
    max_steps = c.value("trainer.max_steps")
    if not (_is_int(max_steps) and (max_steps >= 1 or max_steps == -1)):
        c.problems.append(
            f"trainer.max_steps must be an integer ≥ 1, or -1 for epochs (got {max_steps!r}); set trainer.max_steps=16"
        )
    c.int_at_least("trainer.accumulate_grad_batches", 1, 1)
    c.int_at_least("trainer.log_every_n_steps", 1, 4)
    c.one_of("trainer.detect_nonfinite", NONFINITE_MODES, "raise")
    if problems_before == len(c.problems):  # every name known and owned by Lightning: ask it
        args = OmegaConf.to_container(trainer, resolve=True)
        assert isinstance(args, dict)
        c.problems += config_limits.trainer_constructor_problems(
            {str(k): v for k, v in args.items() if k not in PIPELINE_TRAINER_KEYS}
        )


def warnings_for(cfg: DictConfig) -> list[str]:
    """Things that will run, but not as the user likely hopes."""
    notes = []
    precision = OmegaConf.select(cfg, "precision")
    on_cpu = is_cpu_run(OmegaConf.select(cfg, "device.accelerator"), torch.cuda.is_available())
    if on_cpu and precision in BF16_ON_CPU_PRECISIONS and not cpu_has_native_bf16():
        notes.append(
            f"precision={precision} on this CPU: it has no native bf16 (no AVX512-BF16 or AMX), "
            "so bf16 is emulated and runs many times slower than precision=32-true"
        )
    return notes

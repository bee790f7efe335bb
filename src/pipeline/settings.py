"""A validated config as typed, frozen settings: what build.py reads.

`settings_of(cfg)` takes a config that config.validate passed and returns `RunSettings`, one
frozen dataclass a group, so a misspelt key is a mypy error in build.py, not a KeyError at run
time. The field names are the YAML keys; conf/ stays the one home of defaults. The groups whose
keys are a library's arguments (optimizer, scheduler, logger, profiler, trainer) stay mappings,
passed on whole. The one other source of values is OLDER_RUNS: keys added after some runs were
saved (eval and resume read a run's saved config), with what those runs did without them.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from omegaconf import DictConfig, OmegaConf

OLDER_RUNS: dict[str, dict[str, Any]] = {
    "data": {"compile": False},  # samples were made eagerly
    "model": {"compile": False, "channels_last": False},
    "device": {"cudnn_benchmark": False, "tf32": None},  # torch's defaults
    "trainer": {"deterministic": False},
}


# model.compile: off, torch.compile's default mode, or one of its modes by name (reduce-overhead
# replays the step's kernels as CUDA graphs, on CUDA only).
CompileModeName = Literal["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
CompileMode = bool | CompileModeName
COMPILE_MODE_NAMES: tuple[str, ...] = get_args(CompileModeName)
COMPILE_MODES: tuple[CompileMode | str, ...] = (True, False, *COMPILE_MODE_NAMES)


@dataclass(frozen=True)
class DataSettings:
    image_size: int
    channels: int
    batch_size: int
    num_samples: int
    num_val_samples: int
    num_workers: int | Literal["auto"]
    compile: bool | Literal["auto"]


@dataclass(frozen=True)
class ModelSettings:
    weights: str | None
    num_classes: int
    channels_last: bool | Literal["auto"]
    compile: CompileMode


@dataclass(frozen=True)
class DDPSettings:
    timeout_s: int
    gradient_as_bucket_view: bool = False  # absent in older runs' configs
    static_graph: bool = False


@dataclass(frozen=True)
class DeviceSettings:
    name: str
    accelerator: str
    devices: int
    strategy: str
    num_nodes: int
    sync_batchnorm: bool
    cudnn_benchmark: bool
    tf32: bool | None
    ddp: DDPSettings | None  # strategy ddp only


@dataclass(frozen=True)
class CheckpointSettings:
    every_n_steps: int
    every_n_minutes: float
    keep_last_k: int


@dataclass(frozen=True)
class GradientSettings:
    enabled: bool
    histogram_every_n_steps: int
    noise_scale: Literal["auto", "on", "off"]
    noise_scale_ema_decay: float


@dataclass(frozen=True)
class CheckSettings:
    enabled: bool
    every_n_steps: int
    on_fail: Literal["raise", "warn"]


@dataclass(frozen=True)
class CallbackSettings:
    progress_bar: bool
    checkpoint: CheckpointSettings
    gradients: GradientSettings
    gradient_check: CheckSettings


@dataclass(frozen=True)
class RunSettings:
    seed: int
    precision: str
    loss: str  # the loss group's name
    data: DataSettings
    model: ModelSettings
    device: DeviceSettings
    callbacks: CallbackSettings
    detect_nonfinite: Literal[
        "raise", "warn", "off"
    ]  # trainer.detect_nonfinite, the pipeline's own
    deterministic: bool  # trainer.deterministic
    trainer: dict[str, Any]  # lightning.Trainer's arguments, less the pipeline's own keys
    optimizer: dict[str, Any]  # its _target_ and arguments (fused: auto|true|false|absent)
    scheduler: dict[str, Any]
    logger: dict[str, Any]  # one entry a logger: its settings
    profiler: dict[str, Any]  # name and the profiler's settings


T = TypeVar("T")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A class's field types, evaluated once a class (~1 ms each time otherwise)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _section(cls: type[T], node: dict[str, Any]) -> T:
    """`cls` from the mapping's keys of its field names; nested dataclasses from nested mappings."""
    hints = _hints(cls)
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # cls is a dataclass
        if field.name not in node:
            continue  # a field with a default (DDPSettings' older keys)
        kind, raw = hints[field.name], node[field.name]
        nested = isinstance(kind, type) and dataclasses.is_dataclass(kind)
        values[field.name] = _section(kind, raw) if nested else raw
    return cls(**values)


# What settings_of reads outside RunSettings' sections (trainer.deterministic: OLDER_RUNS).
TOP_KEYS = ("seed", "precision", "loss.name", "profiler.name", "trainer.detect_nonfinite")


def required_keys() -> list[str]:
    """The dotted keys settings_of reads without a default: each must be in a config it is given
    (`~model.weights` removed one, and the run died in ModelSettings with a TypeError). Not
    OLDER_RUNS' keys, and not device.ddp (made from device's keys)."""

    def fields(cls: type, prefix: str) -> list[str]:
        keys = []
        for field in dataclasses.fields(cls):
            kind, key = _hints(cls)[field.name], f"{prefix}.{field.name}"
            if isinstance(kind, type) and dataclasses.is_dataclass(kind):
                keys += fields(kind, key)
            elif field.default is dataclasses.MISSING and field.name not in OLDER_RUNS.get(
                prefix, {}
            ):
                keys.append(key)
        return keys

    # RunSettings' sections (data, model, device, callbacks), each read from its group
    sections = [(f.name, _hints(RunSettings)[f.name]) for f in dataclasses.fields(RunSettings)]
    keys = [key for group, cls in sections if isinstance(cls, type)
            and dataclasses.is_dataclass(cls) for key in fields(cls, group)]  # fmt: skip
    return [*TOP_KEYS, *(k for k in keys if k != "device.ddp")]


def resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as Python values, interpolations resolved."""
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return {str(k): v for k, v in out.items()}


def settings_of(cfg: DictConfig) -> RunSettings:
    """The validated config `cfg` as RunSettings."""
    raw = resolved(cfg)
    for group, keys in OLDER_RUNS.items():
        raw[group] = keys | raw[group]
    trainer = dict(raw["trainer"])
    device = raw["device"] | {
        "ddp": _section(DDPSettings, raw["device"]) if raw["device"]["strategy"] == "ddp" else None
    }
    return RunSettings(
        seed=raw["seed"],
        precision=raw["precision"],
        loss=raw["loss"]["name"],
        data=_section(DataSettings, raw["data"]),
        model=_section(ModelSettings, raw["model"]),
        device=_section(DeviceSettings, device),
        callbacks=_section(CallbackSettings, raw["callbacks"]),
        detect_nonfinite=trainer.pop("detect_nonfinite"),
        deterministic=trainer["deterministic"],
        trainer=trainer,
        optimizer=raw["optimizer"],
        scheduler=raw["scheduler"],
        logger=raw["logger"] or {},
        profiler=raw["profiler"],
    )

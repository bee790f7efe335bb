"""Validation: every user mistake in a composed config, found at once.

`validate(cfg)` returns one line per problem — the key, the value given, what is allowed, the
fix — and is run for every job before any heavy work. The keys that stand alone are rows of
RULES (the mechanism: config_rules.py); the checks across keys, or against the libraries and
the machine, are the named functions below (and config_limits.py). Hydra's own composition
errors (unknown group option, unknown key) are caught earlier, in cli.py, in the same style.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline import config_limits
from pipeline.checkpoints import (
    checkpoint_fit_problems,
    first_nonfinite_optimizer_state,
    nonfinite_weights_problem,
    read_checkpoint,
    run_config_of,
)
from pipeline.config_absent import absent_key_problems
from pipeline.config_dir import group_options
from pipeline.config_optimizer import optimizer_problems
from pipeline.config_rules import (
    Condition,
    Rule,
    choice,
    equals,
    flag,
    integer,
    is_int,
    is_number,
    key_of,
    number,
    problems,
    value,
)
from pipeline.config_trainer import ENVIRONMENT_REFUSED, trainer_problems
from pipeline.devices import cpu_has_native_bf16, is_cpu_run, is_cuda_run
from pipeline.errors import ConfigError
from pipeline.geometry import min_image_size, resnet_final_size
from pipeline.launch_rank import launch_problems, one_of_several
from pipeline.loggers import MLFLOW_MODULES, logger_problems, missing_modules
from pipeline.model import weights_problems
from pipeline.override_checks import option_values
from pipeline.sample_hash import missing_cpu_compiler
from pipeline.schedules import warmup_factor
from pipeline.settings import COMPILE_MODE_NAMES, COMPILE_MODES, required_keys
from pipeline.weights import is_torchvision_weights

PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
# 16-mixed runs as bf16 on a CPU (pipeline.eval; training refuses it there)
BF16_ON_CPU_PRECISIONS = ("bf16-mixed", "bf16-true", "16-mixed")
NONFINITE_MODES = ("raise", "warn", "off")
SCHEDULERS = ("none", "cosine", "step")
_ABSENT = object()


def _has(key: str) -> Condition:
    """A `when`: the key exists (absent in an older run's config: nothing to check)."""
    return lambda cfg: OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT


def _yaml_off(v: object) -> str:
    return " (YAML reads an unquoted off as false: quote it)" if isinstance(v, bool) else ""


RULES: tuple[Rule, ...] = (
    integer("seed", 0, 42, high=config_limits.NUMPY_SEED_MAX),
    number("optimizer.lr", "a number > 0", lambda v: v > 0, "1e-3"),
    choice("optimizer.fused", ("auto", True, False), "auto", "auto, true or false",
           when=lambda cfg: value(cfg, "optimizer.fused") is not None),
    integer("data.image_size", 1, 64),
    integer("data.batch_size", 1, 32),
    integer("data.channels", 1, 3),
    integer("data.num_samples", 1, 512),
    integer("data.num_val_samples", 1, 128),
    integer("data.num_workers", 0, 0, when=lambda cfg: value(cfg, "data.num_workers") != "auto"),
    choice("data.compile", (True, False, "auto"), "auto", "true, false or auto",
           when=_has("data.compile")),  # not 1 or 0, which equal True and False
    integer("model.num_classes", 1, 1000),
    choice("model.channels_last", (True, False, "auto"), "auto", "true, false or auto"),
    choice("model.compile", COMPILE_MODES, "false", ", ".join(["true", "false", *COMPILE_MODE_NAMES])),
    choice("precision", PRECISIONS, "32-true"),
    integer("callbacks.checkpoint.every_n_steps", 0, 0),
    integer("callbacks.checkpoint.keep_last_k", 0, 0),
    number("callbacks.checkpoint.every_n_minutes", "a number ≥ 0", lambda v: v >= 0, "10",
           note="; 0: off"),
    integer("callbacks.gradients.histogram_every_n_steps", 0, 100),
    choice("callbacks.gradients.noise_scale", ("auto", "on", "off"), "auto", "auto, on or off",
           hint=_yaml_off),
    number("callbacks.gradients.noise_scale_ema_decay", "a number in [0, 1)",
           lambda v: 0 <= v < 1, "0.95"),
    integer("callbacks.gradient_check.every_n_steps", 0, 50),
    choice("callbacks.gradient_check.on_fail", ("raise", "warn"), "raise"),
    Rule("device.devices", "an integer ≥ 1, or -1 for all GPUs",
         lambda v: is_int(v) and (v >= 1 or v == -1), "2"),
    integer("device.num_nodes", 1, 1),
    integer("device.timeout_s", 1, 300, when=equals("device.strategy", "ddp")),
    flag("device.sync_batchnorm"),
    flag("device.cudnn_benchmark"),
    flag("device.gradient_as_bucket_view", when=equals("device.strategy", "ddp")),
    flag("device.static_graph", when=equals("device.strategy", "ddp")),
    choice("device.tf32", (None, True, False), "null", "null, true or false"),
    choice("scheduler.name", SCHEDULERS, "none"),
    integer("scheduler.warmup_steps", 0, 0, when=equals("scheduler.name", "cosine", "step")),
    Rule("scheduler.total_steps", "an integer ≥ 1", lambda v: is_int(v) and v >= 1,
         "N or trainer.max_steps=N", when=equals("scheduler.name", "cosine")),
    number("scheduler.min_lr_ratio", "in [0, 1]", lambda v: 0 <= v <= 1, "0",
           when=equals("scheduler.name", "cosine")),
    integer("scheduler.step_size", 1, 10, when=equals("scheduler.name", "step")),
    number("scheduler.gamma", "in (0, 1]", lambda v: 0 < v <= 1, "0.5",
           when=equals("scheduler.name", "step")),
    Rule("trainer.max_steps", "an integer ≥ 1, or -1 for epochs",
         lambda v: is_int(v) and (v >= 1 or v == -1), "16"),
    integer("trainer.accumulate_grad_batches", 1, 1),
    Rule("trainer.gradient_clip_val", "null or a number ≥ 0",
         lambda v: v is None or (is_number(v) and not v < 0), "null", note="; 0 or null: no clipping"),
    integer("trainer.log_every_n_steps", 1, 4),
    choice("trainer.detect_nonfinite", NONFINITE_MODES, "raise"),
    integer("profiler.skip_first", 0, 5, when=equals("profiler.name", "torch")),
    integer("profiler.warmup", 0, 1, when=equals("profiler.name", "torch")),
    integer("profiler.active", 1, 3, when=equals("profiler.name", "torch")),
    integer("profiler.row_limit", 1, 20, when=equals("profiler.name", "torch")),
)  # fmt: skip


def validate(
    cfg: DictConfig,
    *,
    cuda_available: bool | None = None,
    training: bool = True,
    required: Sequence[str] | None = None,
) -> list[str]:
    """Every problem in a composed train config, one line each; empty when it can run.
    `training=False` (pipeline.eval): what only training needs is not asked of it. `required`:
    the keys the config must hold (default: settings.required_keys in training, none else: an
    older run's config may lack a newer key)."""
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if required is None:
        required = required_keys() if training else []
    required = [*required, *logger_keys(value(cfg, "logger"))]
    found = absent_key_problems(cfg, problems(cfg, RULES), required)
    ruled = {key_of(p) for p in found}  # inf or nan where a row allows no such value: its line
    found += [p for p in config_limits.number_problems(cfg) if key_of(p) not in ruled]
    found += optimizer_problems(
        value(cfg, "optimizer"),
        already=found,
        precision=value(cfg, "precision"),
        on_cuda=is_cuda_run(str(value(cfg, "device.accelerator")), cuda_available),
    )
    found += _data_problems(cfg, cuda_available, training)
    found += _model_problems(cfg)
    found += _cuda_graph_problems(cfg, cuda_available)
    found += _device_problems(cfg, cuda_available, training)
    found += trainer_problems(value(cfg, "trainer"), already=found)
    if not any(key_of(p).split(".")[0] in ("trainer", "data", "device") for p in found):
        found += config_limits.epoch_problems(
            cfg.trainer,
            num_samples=cfg.data.num_samples,
            batch_size=cfg.data.batch_size,
            world_size=_world_size(cfg, cuda_available),
        )
    found += _profiler_problems(cfg)
    launched = one_of_several() if training and not launch_problems() else None  # else: cli's
    refused = any(p.startswith(ENVIRONMENT_REFUSED) for p in found)  # Lightning's line says it
    if launched and not refused and _world_size(cfg, cuda_available) == 1:
        # Lightning took rank 1 for rank 1 of 1: no TensorBoard writer, a crash at its first
        # log; and rank 0 trained alone, a run of its own, until the launcher stopped it
        found.append(
            f"{launched}: a launcher started this process as one of several, and "
            f"device={value(cfg, 'device.name')} runs one; set device=ddp (or ddp_cpu) with "
            "device.devices × device.num_nodes the launch's processes, or launch one process"
        )
    loggers = value(cfg, "logger") or {}
    found += logger_problems(
        loggers, missing_modules(MLFLOW_MODULES) if "mlflow" in loggers else []
    )
    if not found:  # the estimate needs sane sizes, a precision and a device
        found += config_limits.memory_problems(
            cfg, cuda=is_cuda_run(value(cfg, "device.accelerator"), cuda_available)
        )
    ckpt = value(cfg, "ckpt_path")
    if ckpt is not None:
        found += checkpoint_problems(str(ckpt), cfg)
    return found


def logger_keys(loggers: object) -> list[str]:
    """Each chosen logger's keys, as its option of the logger group has them: what its logger
    is built from (~logger.tensorboard.log_graph was a KeyError once the run had started)."""
    if not isinstance(loggers, DictConfig):
        return []
    options = group_options("logger")
    return [f"logger.{name}.{key}" for name in map(str, loggers) if name in options
            for key in option_values("logger", name).get(name) or {}]  # fmt: skip


def _world_size(cfg: DictConfig, cuda_available: bool) -> int:
    return config_limits.processes(cfg, torch.cuda.device_count() if cuda_available else 0)


def _data_problems(cfg: DictConfig, cuda_available: bool, training: bool) -> list[str]:
    """What the sizes leave for BatchNorm and the last batch in training (evaluation normalises
    by the running statistics: a batch of one image is fine); a C++ compiler for data.compile."""
    found = []
    size, batch = value(cfg, "data.image_size"), value(cfg, "data.batch_size")
    if training and is_int(size) and is_int(batch) and size >= 1 and batch >= 1:
        if batch * resnet_final_size(size) ** 2 < 2:
            found.append(
                f"data.image_size={size} with data.batch_size={batch} leaves 1 value per channel in "
                f"ResNet18's last BatchNorm (training needs > 1); set data.image_size={min_image_size(batch)} "
                "or more, or data.batch_size=2 or more"
            )
        elif is_int(samples := value(cfg, "data.num_samples")) and samples >= 1:
            found += config_limits.last_batch_problems(
                num_samples=samples,
                batch_size=batch,
                image_size=size,
                world_size=_world_size(cfg, cuda_available),
            )
    if value(cfg, "data.compile") is True:
        found += _cxx_problems(cfg, "data.compile=true", " (the same samples, made eagerly)")
    return found


def _cxx_problems(cfg: DictConfig, asked: str, note: str = "") -> list[str]:
    """torch.compile on a CPU needs a C++ compiler: without one, `asked` (data.compile=true,
    model.compile=…) would fail only after ~20 s of compiling."""
    on_cpu = is_cpu_run(value(cfg, "device.accelerator"), torch.cuda.is_available())
    if not on_cpu or not (missing := missing_cpu_compiler()):
        return []
    key = asked.partition("=")[0]
    return [
        f"{asked}: torch.compile finds no C++ compiler on this machine ({missing}); install one "
        f"(g++) or set {key}=false{note}"
    ]


def _cuda_graph_problems(cfg: DictConfig, cuda_available: bool) -> list[str]:
    """CUDA graphs (model.compile=reduce-overhead or max-autotune, on CUDA) own the gradients
    their backward makes: under accumulation the next batch's replay overwrites them before they
    are summed (torch: "accessing gradient tensor output of CUDAGraphs that has been
    overwritten")."""
    mode, accumulate = value(cfg, "model.compile"), value(cfg, "trainer.accumulate_grad_batches")
    if (
        mode not in ("reduce-overhead", "max-autotune")
        or not (is_int(accumulate) and accumulate > 1)
        or not is_cuda_run(str(value(cfg, "device.accelerator")), cuda_available)
    ):
        return []
    return [
        f"model.compile={mode} with trainer.accumulate_grad_batches={accumulate} on CUDA: its "
        "CUDA graphs' backward owns the gradients it makes, and the next batch's replay "
        "overwrites them before they are summed; use model.compile=true or "
        "max-autotune-no-cudagraphs, or trainer.accumulate_grad_batches=1"
    ]


def _model_problems(cfg: DictConfig) -> list[str]:
    """The classes against the loss; the weights file; a C++ compiler for model.compile."""
    found = []
    compile_ = value(cfg, "model.compile")
    if compile_ is True or compile_ in COMPILE_MODE_NAMES:  # else a traceback in step 1
        found += _cxx_problems(cfg, f"model.compile={str(compile_).lower()}")
    classes = value(cfg, "model.num_classes")
    if value(cfg, "loss.name") == "cross_entropy" and is_int(classes) and 1 <= classes < 2:
        found.append(
            f"loss=cross_entropy needs model.num_classes ≥ 2 (got {classes}); "
            "set model.num_classes=10"
        )
    weights = value(cfg, "model.weights")
    if weights is not None and not isinstance(weights, str):
        found.append(f"model.weights must be null, DEFAULT or a file path (got {weights!r})")
    elif (
        isinstance(weights, str)
        and not is_torchvision_weights(weights)
        and not Path(weights).expanduser().is_file()
    ):
        found.append(
            f"model.weights={weights} is not a file; give a state-dict path, DEFAULT, or model.weights=null"
        )
    elif isinstance(weights, str):  # its contents, before a run directory is made
        found += weights_problems(weights, str(value(cfg, "precision")))
    return found


def _device_problems(cfg: DictConfig, cuda_available: bool, training: bool) -> list[str]:
    """A GPU device needs a GPU; SyncBatchNorm needs CUDA; training in 16-mixed needs CUDA."""
    found = []
    accel, name = value(cfg, "device.accelerator"), value(cfg, "device.name")
    if training and value(cfg, "precision") == "16-mixed" and is_cpu_run(accel, cuda_available):
        found.append(
            f"precision=16-mixed on a CPU (device={name}): float16 autocast is CUDA's, and Lightning "
            "would train in bf16-mixed instead while the run says 16-mixed; set "
            "precision=bf16-mixed, or train on a GPU"
        )
    if accel == "gpu" and not cuda_available:
        found.append(
            f"device={name} needs a CUDA GPU, but torch sees none (torch.cuda.is_available() is False); "
            "set device=cpu, device=auto or device=ddp_cpu"
        )
    if value(cfg, "device.sync_batchnorm") is True and accel == "cpu":
        found.append(
            f"device.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm is CUDA-only; got device={name}); "
            "set device.sync_batchnorm=false"
        )
    return found


def _profiler_problems(cfg: DictConfig) -> list[str]:
    """profiler=torch: its schedule fits in the run (steps counted from this process's start)."""
    if value(cfg, "profiler.name") != "torch":
        return []
    schedule = [value(cfg, f"profiler.{k}") for k in ("skip_first", "warmup", "active")]
    max_steps = value(cfg, "trainer.max_steps")
    if not all(is_int(n) for n in (*schedule, max_steps)) or max_steps < 1 or min(schedule) < 0:
        return []  # a row of RULES names what is wrong
    if (wanted := sum(schedule)) > max_steps:
        return [
            f"profiler.skip_first + warmup + active = {wanted} steps, more than trainer.max_steps="
            f"{max_steps}; set trainer.max_steps={wanted} or profile fewer steps"
        ]
    return []


def checkpoint_problems(path: str, cfg: DictConfig | None = None) -> list[str]:
    """Why `path` cannot be resumed from (with `cfg`) or evaluated, if it cannot."""
    try:
        ckpt = read_checkpoint(path)
        saved = run_config_of(ckpt, path)
    except ConfigError as exc:
        return exc.problems
    nonfinite = nonfinite_weights_problem(ckpt, saved, path)
    if nonfinite is not None:
        return [nonfinite]
    if cfg is None:  # evaluated: the optimizer's state is not read
        return []
    if (where := first_nonfinite_optimizer_state(ckpt)) is not None:
        return [
            f"ckpt_path={path} holds inf or NaN in its optimizer state ({where}): training on "
            "would carry it into every update; use another checkpoint of the run"
        ]
    return checkpoint_fit_problems(ckpt, saved, cfg, path)


def warmup_notes(cfg: DictConfig) -> list[str]:
    """A schedule's warmup as long as the run: its lr only ramps up and never decays."""
    warmup, steps = value(cfg, "scheduler.warmup_steps"), value(cfg, "trainer.max_steps")
    if value(cfg, "scheduler.name") not in ("cosine", "step") or not (
        is_int(warmup) and is_int(steps) and 1 <= steps <= warmup
    ):
        return []
    reached = warmup_factor(steps - 1, warmup)
    return [
        f"scheduler.warmup_steps={warmup} is not shorter than the run (trainer.max_steps={steps}): "
        f"the learning rate only ramps up, to {reached:.0%} of optimizer.lr at the last step, and "
        "never decays; set a shorter warmup or more steps"
    ]


def warnings_for(cfg: DictConfig) -> list[str]:
    """Things that will run, but not as the user likely hopes."""
    notes = []
    precision = value(cfg, "precision")
    on_cpu = is_cpu_run(value(cfg, "device.accelerator"), torch.cuda.is_available())
    if on_cpu and precision in BF16_ON_CPU_PRECISIONS and not cpu_has_native_bf16():
        notes.append(
            f"precision={precision} on this CPU: it has no native bf16 (no AVX512-BF16 or AMX), "
            "so bf16 is emulated and runs many times slower than precision=32-true"
        )
    notes += warmup_notes(cfg)
    if on_cpu and value(cfg, "model.compile") == "reduce-overhead":
        notes.append(
            "model.compile=reduce-overhead on a CPU: CUDA graphs are CUDA's, so it compiles as "
            "model.compile=true does"
        )
    return notes

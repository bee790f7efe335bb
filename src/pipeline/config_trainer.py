"""trainer.* against lightning.Trainer: names it takes, names the pipeline owns, and Lightning's
own checks of the values (a bare Trainer built with them). One line per problem, config.py's style."""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any, Literal, Optional, Union

from lightning.pytorch import Trainer
from omegaconf import DictConfig, OmegaConf

from pipeline.config_rules import argument_defaults, hydra_value, refused_arguments

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
# Trainer arguments that would break the run directory's contract; refused where set to anything on.
BREAKS_THE_RUN_DIR = {
    "fast_dev_run": "turns off the loggers and checkpoints (the run directory would hold neither "
    "tensorboard/ nor checkpoints/last.ckpt); for a smoke run use debug=fast, or set "
    "trainer.max_steps=N",
}
PIPELINE_TRAINER_KEYS = ("detect_nonfinite",)  # ours, popped before lightning.Trainer sees them


def trainer_arguments() -> set[str]:
    """The keyword arguments lightning.Trainer takes."""
    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def trainer_problems(trainer: Any, already: list[str]) -> list[str]:
    """Every trainer.X is a lightning.Trainer argument the pipeline does not own; then, if
    nothing else is wrong with trainer.* (`already`: the problems found so far), Lightning's
    own checks of them."""
    if not isinstance(trainer, DictConfig):  # unless removed or nulled, which has its line
        said = any(p.startswith("trainer ") for p in already)
        return [] if said else ["trainer must be a mapping of lightning.Trainer arguments"]
    known, found = trainer_arguments(), []
    for key in map(str, trainer):
        if key in PIPELINE_TRAINER_KEYS:
            continue
        if key in OWNED_TRAINER_ARGS:
            found.append(
                f"trainer.{key} is set by the pipeline; use {OWNED_TRAINER_ARGS[key]} instead"
            )
        elif key in BREAKS_THE_RUN_DIR and trainer[key] not in (False, 0, None):
            found.append(f"trainer.{key}={hydra_value(trainer[key])} {BREAKS_THE_RUN_DIR[key]}")
        elif key not in known:
            close = [k for k in sorted(known) if k.startswith(key[:4])][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            found.append(
                f"trainer.{key} is not a lightning.Trainer argument{hint}; remove it or fix the spelling"
            )
    if not found and not any(p.startswith("trainer.") for p in already):
        args = OmegaConf.to_container(trainer, resolve=True)
        assert isinstance(args, dict)
        lightnings = {str(k): v for k, v in args.items() if k not in PIPELINE_TRAINER_KEYS}
        found += switch_problems(lightnings) or trainer_constructor_problems(lightnings)
    return found


def switch_problems(trainer_args: dict[str, Any]) -> list[str]:
    """lightning.Trainer's on/off arguments given something else: Lightning takes most of them
    as they are (trainer.enable_model_summary=abc, trainer.inference_mode=1 train, read as true)."""
    parameters = inspect.signature(Trainer.__init__).parameters
    found = []
    for key, value in trainer_args.items():
        annotation = parameters[key].annotation if key in parameters else None
        allowed: tuple[Any, ...] = {
            bool: (True, False),
            Optional[bool]: (True, False, None),  # noqa: UP045  # Lightning's annotation
            Union[bool, Literal["warn"], None]: (True, False, None, "warn"),  # noqa: UP007
        }.get(annotation, ())
        if allowed and not any(value is a or (a == "warn" and value == a) for a in allowed):
            choices = ", ".join(hydra_value(a) for a in allowed)
            found.append(
                f"trainer.{key} must be one of {choices} (got {hydra_value(value)}); "
                f"set trainer.{key}={hydra_value(parameters[key].default)}"
            )
    return found


ENVIRONMENT_REFUSED = "lightning.Trainer refuses this process's environment"


def _bare_trainer(**trainer_args: Any) -> Trainer:
    """A bare Trainer (CPU, no logger, no callbacks; ~12 ms) with these arguments, which take
    the place of its own (trainer.enable_model_summary=false was "got multiple values")."""
    bare: dict[str, Any] = {"accelerator": "cpu", "devices": 1, "logger": False,
                            "enable_checkpointing": False, "enable_progress_bar": False,
                            "enable_model_summary": False}  # fmt: skip
    return Trainer(**(bare | trainer_args))


def trainer_constructor_problems(trainer_args: dict[str, Any]) -> list[str]:
    """Lightning's own validation of the trainer.* arguments, one line per refused argument
    (each tried alone once the whole set is refused), its logging and warnings silenced; one
    line where it refuses a Trainer of its defaults (SLURM_NTASKS=2 outside srun: six lines
    named six trainer.* keys for it)."""
    quiet = logging.getLogger("lightning.pytorch")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = refused_arguments(
                "trainer", "lightning.Trainer", _bare_trainer, trainer_args,
                defaults=argument_defaults(Trainer),
            )  # fmt: skip
            if found:
                try:  # a Trainer of its defaults refused too: the environment, once
                    _bare_trainer()
                except Exception as exc:  # what Lightning raises: MisconfigurationException, …
                    reason = " ".join(str(exc).split()).rstrip(".") or type(exc).__name__
                    return [f"{ENVIRONMENT_REFUSED}, whatever trainer.* says: {reason}"]
            return found
    finally:
        quiet.setLevel(level)

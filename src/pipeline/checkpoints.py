"""Reading the pipeline's checkpoints safely, for resuming and for eval."""

from __future__ import annotations

import math
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pipeline.errors import ConfigError
from pipeline.layout import CHECKPOINT_CONFIG_KEY, LAST_CHECKPOINT
from pipeline.resources import resnet18_on_meta
from pipeline.weights import load_file, state_dict_mismatch


def read_checkpoint(path: str, key: str = "ckpt_path", *, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint written by this package; ConfigError if it is anything else.
    `mmap`: its tensors mapped, not read (for its saved config, its step, its shapes)."""
    ckpt = load_file(path, key, mmap=mmap)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(
            [f"{key}={path} is not a Lightning checkpoint; give a run's {LAST_CHECKPOINT}"]
        )
    return ckpt


def finished_epochs(ckpt: dict[str, Any]) -> int:
    """How many epochs a checkpoint's run had finished: its epoch, plus one where it was saved on
    that epoch's last batch (at the epoch's end, or on the batch itself; Lightning then counts the
    epoch done on restoring it)."""
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
    return int(ckpt.get("epoch", 0)) + int(bool(progress.get("is_last_batch")))


def first_nonfinite_tensor(state: dict[str, Any]) -> str | None:
    """The first key of a state dict whose floating-point tensor holds inf or NaN, or None. One
    pass over the weights (~10 ms for ResNet18 here)."""
    return next((key for key, t in state.items() if not _finite(t)), None)


def first_nonfinite_optimizer_state(ckpt: dict[str, Any]) -> str | None:
    """Where a checkpoint's optimizer state holds inf or NaN ("momentum_buffer of parameter 3"),
    or None: what a resumed run would carry into every update (a resume of such a file stopped
    steps later, saying an update had made the weights non-finite and to lower optimizer.lr)."""
    for optimizer in ckpt.get("optimizer_states") or []:
        for param, state in ((optimizer or {}).get("state") or {}).items():
            for name, value in (state or {}).items():
                if not all(map(_finite, value if isinstance(value, list | tuple) else [value])):
                    return f"{name} of parameter {param}"
    return None


def _finite(value: Any) -> bool:
    """A tensor or a Python number without inf or NaN (Adam's step was a float in older torch;
    LBFGS keeps lists of tensors); anything else counts as finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(value.isfinite().all())
    return not isinstance(value, float) or math.isfinite(value)


def nonfinite_weights_problem(ckpt: dict[str, Any], saved: dict[str, Any], path: str) -> str | None:
    """Why a checkpoint holding inf or NaN cannot be evaluated or continued from, or None: its
    run diverged and saved on (trainer.detect_nonfinite warn or off), or the file is damaged
    (with raise, the guard saves the last finite state only)."""
    tensor = first_nonfinite_tensor(ckpt["state_dict"])
    if tensor is None:
        return None
    detect_nonfinite = (saved.get("trainer") or {}).get("detect_nonfinite")
    if detect_nonfinite in ("warn", "off"):
        return (
            f"ckpt_path={path} holds inf or NaN in {tensor}: its run diverged and, with "
            f"trainer.detect_nonfinite={detect_nonfinite}, saved the diverged weights; use a "
            "checkpoint from before (callbacks.checkpoint.keep_last_k keeps earlier ones), or train "
            "again with trainer.detect_nonfinite=raise, which saves the last finite state"
        )
    return (
        f"ckpt_path={path} holds inf or NaN in {tensor}: the file is damaged (with "
        "trainer.detect_nonfinite=raise the pipeline saves finite weights only); use another "
        "checkpoint of the run"
    )


def run_config_of(ckpt: dict[str, Any], path: str, key: str = "ckpt_path") -> dict[str, Any]:
    """The training config saved in a checkpoint by RunConfigInCheckpoint."""
    config = ckpt.get(CHECKPOINT_CONFIG_KEY)
    if not isinstance(config, dict):
        raise ConfigError(
            [f"{key}={path} was not written by pipeline.train (it has no saved config)"]
        )
    return config


def shape_mismatch(ckpt: dict[str, Any], cfg: DictConfig) -> list[str]:
    """How the checkpoint's weights differ from the model `cfg` builds (its model.num_classes
    and data.channels), key by key; empty where they fit."""
    net = resnet18_on_meta(cfg.model.num_classes, cfg.data.channels)
    return state_dict_mismatch(
        net, {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()}
    )


def own_config_problems(ckpt: dict[str, Any], run_cfg: DictConfig, path: str) -> list[str]:
    """Whether a checkpoint's weights fit the config saved in it (`run_cfg`, as eval builds its
    model from): a hand-edited checkpoint, or another tool's, was Lightning's size-mismatch
    traceback at load (hostile review)."""
    mismatch = shape_mismatch(ckpt, run_cfg)
    if not mismatch:
        return []
    return [
        f"ckpt_path={path}: its weights do not fit the config saved in it (model.num_classes="
        f"{run_cfg.model.num_classes}, data.channels={run_cfg.data.channels}: {'; '.join(mismatch)}); "
        "it was changed after its run saved it: evaluate the run's own checkpoint"
    ]


def checkpoint_fit_problems(
    ckpt: dict[str, Any], saved: dict[str, Any], cfg: DictConfig, path: str
) -> list[str]:
    """Whether training can continue from `ckpt` with `cfg`: the same model shapes, the same
    optimizer and the same precision, and steps left to take. Found before anything runs, so a
    mismatch never gets as far as the run's files."""

    problems = []
    mismatch = shape_mismatch(ckpt, cfg)
    if mismatch:
        keys = {"model.num_classes": cfg.model.num_classes, "data.channels": cfg.data.channels}
        saved_cfg = OmegaConf.create(saved)
        trained = {k: OmegaConf.select(saved_cfg, k) for k in keys}
        differ = [k for k in keys if trained[k] is not None and trained[k] != keys[k]] or [
            "model.num_classes"
        ]
        problems.append(
            f"ckpt_path={path} does not fit {', '.join(f'{k}={keys[k]}' for k in differ)} "
            f"(it was trained with {', '.join(f'{k}={trained[k]}' for k in differ)}: "
            f"{'; '.join(mismatch)}); train on with its {' '.join(f'{k}={trained[k]}' for k in differ)}, "
            f"or start a new run from its weights: model.weights={path} without resume=/ckpt_path="
        )
    saved_optimizer = (saved.get("optimizer") or {}).get("_target_")
    if saved_optimizer is not None and saved_optimizer != cfg.optimizer._target_:
        problems.append(
            f"ckpt_path={path} holds the state of {saved_optimizer}, not {cfg.optimizer._target_}; "
            "resume with the run's optimizer, or start a new run from its weights: "
            f"model.weights={path}"
        )
    step, max_steps = ckpt["global_step"], cfg.trainer.max_steps
    if isinstance(max_steps, int) and 0 < max_steps <= step:
        problems.append(
            f"ckpt_path={path} is at step {step} and trainer.max_steps={max_steps}: there is nothing "
            f"left to train; to train on, give the run more steps, e.g. trainer.max_steps={2 * step}"
        )
    epochs, max_epochs = finished_epochs(ckpt), OmegaConf.select(cfg, "trainer.max_epochs")
    if isinstance(max_epochs, int) and 0 < max_epochs <= epochs:
        problems.append(
            f"ckpt_path={path} has finished epoch {epochs} and trainer.max_epochs={max_epochs}: "
            "there is nothing left to train; to train on, give the run more epochs, e.g. "
            f"trainer.max_epochs={2 * epochs}"
        )
    saved_precision = saved.get("precision")
    if saved_precision is not None and saved_precision != cfg.precision:
        problems.append(
            f"ckpt_path={path} was trained with precision={saved_precision}, not {cfg.precision}; "
            f"resume with precision={saved_precision}, or start a new run from its weights: "
            f"model.weights={path}"
        )
    return problems


# What a continued run may change from the checkpoint's config, and what the change means for
# its curves: each is named in train.log and on the console as it starts (a resume with another
# data.image_size or loss trained on without a word, one train/loss tag over two losses).
NAMED_ON_RESUME = ("data", "loss", "precision")
SAME_SAMPLES = ("data.num_workers", "data.compile")  # how samples are made, not which


def resume_changes(saved: dict[str, Any], cfg: DictConfig) -> list[str]:
    """`KEY=new (the checkpoint's run had old)` for each leaf under NAMED_ON_RESUME that `cfg`
    sets otherwise than the config saved in the checkpoint (`saved`)."""
    before, now = OmegaConf.create(saved), cfg
    changes = []
    for group in NAMED_ON_RESUME:
        old, new = OmegaConf.select(before, group), OmegaConf.select(now, group)
        if old is None:
            continue
        pairs: list[tuple[str, Any, Any]] = (
            [(group + "." + str(k), old.get(k), new.get(k)) for k in new if k in old]
            if isinstance(new, DictConfig) and isinstance(old, DictConfig)
            else [(group, old, new)]
        )  # a key the checkpoint's config lacks (an older version's) is no change of the user's
        changes += [
            f"{key}={b} (the checkpoint's run had {a})"
            for key, a, b in pairs
            if a != b and key not in SAME_SAMPLES
        ]
    return changes

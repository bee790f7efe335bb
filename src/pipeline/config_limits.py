"""Checks of a config against what the libraries and the machine allow: numbers every key can
hold, the last batch BatchNorm sees, memory and disk (trainer.* against Lightning: config_trainer.py).

Each returns one line per problem, in config.py's style (key, value, what is allowed, the fix).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline import resources
from pipeline.config_rules import is_int
from pipeline.geometry import min_image_size, resnet_final_size

INT64_MAX = 2**63 - 1
NUMPY_SEED_MAX = 2**32 - 1  # numpy's legacy seeding, which Lightning's seed_everything feeds
SKIPPED_ROOTS = ("hydra",)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, DictConfig):
        for name in node.keys():  # noqa: SIM118 (`for k in node` skips ??? values)
            key = f"{prefix}{name!s}"
            if key in SKIPPED_ROOTS:
                continue
            value = node._get_node(name)
            yield from _leaves(
                value if isinstance(value, DictConfig | ListConfig) else node[name], f"{key}."
            )
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _leaves(node[i], f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def number_problems(cfg: DictConfig) -> list[str]:
    """Every float must be finite (nan and inf pass `> 0` checks, then poison a run), and every
    integer must fit the 64 bits torch and numpy hold it in."""
    problems = []
    for key, value in _leaves(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{key} must be a finite number (got {value}); give a finite value")
        elif is_int(value) and abs(value) > INT64_MAX:
            problems.append(
                f"{key}={value} does not fit in 64 bits (at most {INT64_MAX}); give a smaller value"
            )
    return problems


def processes(cfg: DictConfig, cuda_count: int) -> int:
    """Training processes of the run, all nodes together."""
    if OmegaConf.select(cfg, "device.strategy") != "ddp":
        return 1
    devices = OmegaConf.select(cfg, "device.devices")
    per_node = cuda_count if devices == -1 else devices
    return max(per_node, 1) * OmegaConf.select(cfg, "device.num_nodes")


def samples_per_process(num_samples: int, world_size: int) -> int:
    """What each process reads of an epoch's samples: the sampler pads to equal shares."""
    return -(-num_samples // world_size)


def limited_batches(batches: int, limit: Any) -> int:
    """Of `batches`, those a trainer.limit_*_batches value leaves, as Lightning counts them: an
    int that many at most, a float that fraction rounded down, null all."""
    if is_int(limit):
        return min(batches, limit)
    if isinstance(limit, float):
        return int(batches * limit)
    return batches


def last_batch_problems(
    *, num_samples: int, batch_size: int, image_size: int, world_size: int
) -> list[str]:
    """Each process reads ceil(num_samples / world_size) samples (the sampler pads), so an
    epoch's last batch can be much smaller than the others; BatchNorm needs > 1 value per
    channel in layer4 for it too."""
    per_process = samples_per_process(num_samples, world_size)
    last = per_process % batch_size
    if last == 0 or last * resnet_final_size(image_size) ** 2 >= 2:
        return []
    fix = max(per_process - last, batch_size)  # at least one full batch a process
    return [
        f"data.num_samples={num_samples} leaves a last batch of {last} sample(s) per process "
        f"(data.batch_size={batch_size}, {world_size} process(es)), too few for ResNet18's last "
        f"BatchNorm at data.image_size={image_size}; set data.num_samples={fix * world_size} "
        f"(a multiple of the global batch) or data.image_size={min_image_size(last)} or more"
    ]


def epoch_problems(
    trainer: DictConfig, *, num_samples: int, batch_size: int, world_size: int
) -> list[str]:
    """What Lightning takes when it builds the Trainer and refuses only once training starts (a
    traceback, a half-made run directory), or what trains nothing: trainer.val_check_interval
    and check_val_every_n_epoch against a process's training batches an epoch, max_epochs=0,
    limit_train_batches that leaves no batch."""
    found = []
    every = OmegaConf.select(trainer, "check_val_every_n_epoch", default=1)
    if is_int(every) and every < 1:
        found.append(
            f"trainer.check_val_every_n_epoch must be ≥ 1 or null (got {every}); "
            "set trainer.check_val_every_n_epoch=1"
        )
    if OmegaConf.select(trainer, "max_epochs") == 0:
        found.append(
            "trainer.max_epochs=0 trains nothing; set trainer.max_epochs=1 or more, or -1 to "
            "leave the bound to trainer.max_steps"
        )
    epoch = -(-samples_per_process(num_samples, world_size) // batch_size)  # the last one short
    limit = OmegaConf.select(trainer, "limit_train_batches")
    batches = limited_batches(epoch, limit)
    if limit is not None and batches < 1:
        found.append(
            f"trainer.limit_train_batches={limit} leaves none of an epoch's {epoch} training "
            "batches; set trainer.limit_train_batches=1.0"
        )
    interval = OmegaConf.select(trainer, "val_check_interval")
    if is_int(interval) and interval < 1:
        found.append(
            f"trainer.val_check_interval must be a number of training batches ≥ 1 or a fraction "
            f"of an epoch in (0, 1] (got {interval}); set trainer.val_check_interval=1.0"
        )
    elif is_int(interval) and every is not None and batches >= 1 and interval > batches:
        found.append(
            f"trainer.val_check_interval={interval} is more than an epoch's {batches} training "
            f"batches (a process's); set trainer.val_check_interval={batches} or less, or "
            "trainer.check_val_every_n_epoch=null to count batches across epochs"
        )
    return found


def memory_problems(cfg: DictConfig, cuda: bool) -> list[str]:
    """A training step's activations against the memory the run will have: the GPU's, or the
    host's shared by its processes. The estimate is a lower bound, so what is refused could
    never have run."""
    size, batch = cfg.data.image_size, cfg.data.batch_size
    need = resources.activation_bytes(
        image_size=size, channels=cfg.data.channels, batch_size=batch, precision=cfg.precision
    )
    if cuda:
        have, where = resources.gpu_memory_bytes(), "the GPU's"
    else:
        need *= resources.host_processes(
            strategy=cfg.device.strategy,
            accelerator=cfg.device.accelerator,
            devices=cfg.device.devices,
        )
        available = resources.available_memory_bytes()
        if available is None:
            return []
        have, where = available, "this machine's available"
    if need <= have:
        return []
    return [
        f"data.batch_size={batch} of data.image_size={size} needs at least {resources.describe(need)} "
        f"of activations a step, more than {where} {resources.describe(have)}; "
        "lower data.batch_size or data.image_size"
    ]


def disk_problems(cfg: DictConfig, run_dir: Path) -> list[str]:
    """Room for two checkpoints (the new one is written beside the old, then renamed over it)."""
    need = 2 * resources.checkpoint_bytes(
        num_classes=cfg.model.num_classes,
        precision=cfg.precision,
        optimizer_target=str(cfg.optimizer._target_),
    )
    free = resources.free_disk_bytes(run_dir)
    if free >= need:
        return []
    return [
        f"the run directory {run_dir} has {resources.describe(free)} free, and checkpoints need "
        f"{resources.describe(need)} (two copies of last.ckpt while one replaces the other); "
        "free some space or set hydra.run.dir=/a/bigger/disk/run"
    ]

"""Reading the pipeline's checkpoints safely, for resuming and for eval."""

from __future__ import annotations

from typing import Any

from pipeline.callbacks.run_config import CHECKPOINT_KEY
from pipeline.errors import ConfigError
from pipeline.weights import load_file


def read_checkpoint(path: str, key: str = "ckpt_path") -> dict[str, Any]:
    """A Lightning checkpoint written by this package; ConfigError if it is anything else."""
    ckpt = load_file(path, key)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(
            [f"{key}={path} is not a Lightning checkpoint; give a run's checkpoints/last.ckpt"]
        )
    return ckpt


def run_config_of(ckpt: dict[str, Any], path: str, key: str = "ckpt_path") -> dict[str, Any]:
    """The training config saved in a checkpoint by RunConfigInCheckpoint."""
    config = ckpt.get(CHECKPOINT_KEY)
    if not isinstance(config, dict):
        raise ConfigError(
            [f"{key}={path} was not written by pipeline.train (it has no saved config)"]
        )
    return config

"""The hyperparameters a user compares across runs: the HParams tab's columns, MLflow's params,
the CSV logger's hparams.yaml.

Not the whole config: the run's choices that change what is learned (optimizer, lr, weight
decay, batch size, image size, precision, loss, scheduler, seed), and every key the command line
set (a sweep's varied keys, a search trial's) except the instruments' own switches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

HParam = bool | int | float | str
# Always in the table: dotted keys of the resolved config.
COMPARED_KEYS = (
    "optimizer.lr",
    "optimizer.weight_decay",
    "data.batch_size",
    "data.image_size",
    "precision",
    "seed",
)
# Command-line keys that change no training math: instruments, output and resume.
NOT_COMPARED = ("callbacks", "logger", "profiler", "ckpt_path", "resume", "hydra")


def compared_hparams(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, HParam]:
    """The run's comparable hyperparameters as {column: scalar}.

    Args:
        config: the resolved run config as plain containers.
        overrides: the command line's overrides (Hydra's task overrides), as typed.

    The groups optimizer, loss and scheduler appear under their group name with the option's
    name (`optimizer: adamw`); a group the command line chose (`device=cpu`) as typed; a key it
    set (`trainer.max_steps=50`) with its resolved value. Values HParams cannot show (lists,
    None, mappings) become strings.
    """
    table: dict[str, Any] = {
        # torch.optim.AdamW → adamw: the class names match the optimizer group's option names
        "optimizer": str(config["optimizer"]["_target_"]).rsplit(".", 1)[-1].lower(),
        "loss": config["loss"]["name"],
        "scheduler": config["scheduler"]["name"],
    }
    for key in COMPARED_KEYS:
        found, value = _lookup(config, key)
        if found:
            table[key] = value
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        key = o.key_or_group
        if o.is_delete() or key.split(".")[0].split("/")[0] in NOT_COMPARED or key in table:
            continue
        found, value = _lookup(config, key)
        if found and isinstance(value, Mapping):  # a group's option: the name typed
            value = o.get_value_element_as_str()
        table[key] = value if found else o.get_value_element_as_str()
    return {k: v if isinstance(v, HParam) else str(v) for k, v in table.items()}


def _lookup(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(whether the dotted key is in config, its value)."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node

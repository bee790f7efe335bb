"""optimizer.* against the optimizer class it names: its arguments, its fused implementation,
and the class's own checks of the values (built once on a dummy parameter, as trainer.* is
checked by building a bare Trainer). One line per problem, config.py's style."""

from __future__ import annotations

import inspect
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from pipeline.config_dir import CONFIG_DIR, group_options
from pipeline.config_rules import argument_defaults, refused_arguments

OURS = ("_target_", "_partial_", "fused")  # Hydra's keys, and fused (auto|true|false: build.py)


def optimizer_arguments(target: str) -> set[str]:
    """The keyword arguments of the optimizer class `target` names (all accepted if unknown:
    an unknown _target_ fails where it is instantiated, with its own message)."""
    try:
        return set(inspect.signature(get_class(target)).parameters)
    except Exception:
        return {"fused"}


def optimizer_problems(optimizer: Any, already: list[str]) -> list[str]:
    """optimizer.fused names an implementation the class has; every other optimizer.X is an
    argument of the class; then, if nothing else is wrong with optimizer.* (`already`: the
    problems found so far), the class's own checks of the values (momentum=-1, a string…)."""
    if not isinstance(optimizer, DictConfig):
        return ["optimizer must be a mapping: _target_ and the optimizer's arguments"]
    target = str(optimizer.get("_target_"))
    known, found = optimizer_arguments(target), []
    fused = optimizer.get("fused")
    if (fused == "auto" or isinstance(fused, bool)) and "fused" not in known:
        found.append(
            f"optimizer.fused={str(fused).lower()}: {target} has no fused implementation; "
            "drop the key: ~optimizer.fused"
        )
    if known == {"fused"}:  # the class is unknown: it fails where it is instantiated
        return found
    for key in map(str, optimizer):
        if key not in (*known, *OURS):
            found.append(
                f"optimizer.{key}: {target} takes no argument {key} (it takes: "
                f"{', '.join(sorted(known - {'params'}))}); drop it: ~optimizer.{key}"
            )
    # torch takes these: reported beside any other problem, not only once there are none
    momentum = momentum_problems(optimizer.get("momentum")) if "momentum" in known else []
    if found or any(p.startswith("optimizer.") for p in already):
        return found + momentum
    args = OmegaConf.to_container(optimizer, resolve=True)
    assert isinstance(args, dict)
    name = target.rsplit(".", 1)[-1]
    option, ours = option_defaults(target)
    return (
        refused_arguments(
            "optimizer",
            name,
            lambda **kw: get_class(target)([torch.zeros(1, requires_grad=True)], **kw),  # a dummy
            {str(k): v for k, v in args.items() if k not in OURS},
            defaults=argument_defaults(get_class(target)) | ours,
            defaults_of=f"optimizer={option}" if option else None,
        )
        + momentum
    )


def option_defaults(target: str) -> tuple[str | None, dict[str, Any]]:
    """The conf/optimizer/ option whose _target_ is `target`, and its values (the defaults a run
    of it starts from: SGD's momentum is 0.9 here, 0 in torch); (None, {}) where none is."""
    for option in group_options("optimizer"):
        values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / f"{option}.yaml"))
        if isinstance(values, dict) and values.get("_target_") == target:
            return option, {str(k): v for k, v in values.items() if k not in OURS}
    return None, {}


def momentum_problems(momentum: Any) -> list[str]:
    """A momentum of 1 or more, which torch takes (SGD, RMSprop): each step then carries all of
    the last one, or more, so the steps never shrink, or grow without bound. The fix is the
    seed's momentum."""
    if isinstance(momentum, bool):  # torch takes true as 1
        return [f"optimizer.momentum must be a number below 1 (got {str(momentum).lower()}); "
                "set optimizer.momentum=0.9"]  # fmt: skip
    if not isinstance(momentum, int | float) or momentum < 1:
        return []
    return [
        f"optimizer.momentum must be below 1 (got {momentum}): each step would carry all of the "
        "last one or more, so the steps never shrink; set optimizer.momentum=0.9"
    ]

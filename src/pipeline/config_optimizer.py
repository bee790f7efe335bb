"""optimizer.* against the optimizer class it names: its arguments, its fused implementation,
and the class's own checks of the values (built once on a dummy parameter, as trainer.* is
checked by building a bare Trainer). One line per problem, config.py's style."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline.config_dir import group_options, option_values
from pipeline.config_rules import (
    argument_defaults,
    hydra_value,
    is_number,
    key_of,
    locate,
    refused_arguments,
)
from pipeline.resources import parameter_dtype

OURS = ("_target_", "_partial_", "fused")  # Hydra's keys, and fused (auto|true|false: build.py)


def optimizer_target(target: str) -> tuple[Any, str | None]:
    """The optimizer class optimizer._target_ names, or why it cannot be the optimizer: nothing
    importable by that name (Hydra said "Error locating target" with exit 1 only when the run
    built it), or anything but a subclass of torch.optim.Optimizer (a function passed as one,
    math.sqrt say, was told to drop optimizer.lr, which then must be set: a circle); SparseAdam
    takes sparse gradients only."""
    options = "|".join(group_options("optimizer"))
    fix = f"choose optimizer={options}, or a class of torch.optim (torch.optim.NAdam, …)"
    try:
        found = locate(target)
    except Exception:  # ImportError, or whatever importing the module raised
        return None, f"optimizer._target_={target} names nothing that can be imported; {fix}"
    if isinstance(found, type) and issubclass(found, torch.optim.SparseAdam):
        sparse = "takes sparse gradients only (ResNet18's are dense)"
        return None, f"optimizer._target_={target} {sparse}; {fix}"
    optimizer = torch.optim.Optimizer
    if not (isinstance(found, type) and issubclass(found, optimizer) and found is not optimizer):
        not_one = "is not an optimizer (a subclass of torch.optim.Optimizer)"
        return None, f"optimizer._target_={target} {not_one}; {fix}"
    return found, None


def optimizer_problems(
    optimizer: Any, already: list[str], precision: Any = "32-true", on_cuda: bool = False
) -> list[str]:
    """optimizer._target_ names an optimizer; optimizer.fused names an implementation the class
    has; every other optimizer.X is an argument of the class, of the type its default has (a
    bool for nesterov: torch takes any value, "abc" as true); then, if nothing else is wrong
    with optimizer.* (`already`: the problems found so far), the class's own checks of the
    values (momentum=-1, a string…); for a CPU run, by two steps of it on a weight of
    `precision`'s dtype in the implementation the run takes (fused where optimizer.fused is
    true; auto is not fused on a CPU): torch's SGD cannot apply an lr past float16's 65504 to
    float16 weights (16-true), its fused kernel can. A CUDA run's optimizer (`on_cuda`) is only
    built: a CPU weight's step refuses options torch takes there (capturable=True)."""
    if not isinstance(optimizer, DictConfig):
        return ["optimizer must be a mapping: _target_ and the optimizer's arguments"]
    target = str(optimizer.get("_target_"))
    made_by, wrong = optimizer_target(target)
    if wrong is not None:
        return [wrong]
    signature = inspect.signature(made_by)
    known, found = set(signature.parameters), []
    fused = optimizer.get("fused")
    if isinstance(fused, bool) and "fused" not in known:  # auto: where the class has one
        found.append(
            f"optimizer.fused={str(fused).lower()}: {target} has no fused implementation; "
            "drop the key: ~optimizer.fused"
        )
    elif fused is True and on_cuda and precision == "16-mixed":
        found.append(
            "optimizer.fused=true with precision=16-mixed on CUDA: a fused step unscales the "
            "GradScaler's gradients inside its kernel, so the gradient instruments would read "
            "them multiplied by the loss scale; use optimizer.fused=auto (not fused under "
            "16-mixed) or precision=bf16-mixed"
        )
    for key in map(str, optimizer):
        if key not in (*known, *OURS):
            found.append(
                f"optimizer.{key}: {target} takes no argument {key} (it takes: "
                f"{', '.join(sorted(known - {'params'}))}); drop +optimizer.{key}=… from the "
                f"command line (or, where a config file sets it, remove it: ~optimizer.{key})"
            )
    name = target.rsplit(".", 1)[-1]
    option, ours = option_defaults(target)
    defaults = argument_defaults(made_by) | ours
    whose = f"optimizer={option}" if option else name
    # torch takes these: reported beside any other problem, not only once there are none
    reported = {key_of(p) for p in already}  # optimizer.lr's own rule, say
    values = {str(k): v for k, v in optimizer.items()}
    typed = {k: v for k, v in values.items()
             if k in known and k not in (*OURS, "momentum") and f"optimizer.{k}" not in reported}  # fmt: skip
    mistyped = type_problems(typed, signature, defaults, whose)
    has_momentum = "momentum" in known and "momentum" in optimizer
    momentum = momentum_problems(optimizer.momentum) if has_momentum else []
    beside = momentum + mistyped
    if found or any(p.startswith("optimizer.") for p in already):
        return found + beside
    args = OmegaConf.to_container(optimizer, resolve=True)
    assert isinstance(args, dict)
    arguments = {str(k): v for k, v in args.items() if k not in OURS}
    steps = 0 if on_cuda else 2
    fused_step = steps > 0 and fused is True and "fused" in known
    wrong_type = set(map(key_of, beside))  # reported above, not again as torch refuses them
    return (
        refused_arguments(
            "optimizer",
            name,
            lambda **kw: build_and_step(
                made_by, parameter_dtype(str(precision)), fused=fused_step, steps=steps, **kw
            ),
            {k: v for k, v in arguments.items() if f"optimizer.{k}" not in wrong_type},
            defaults=defaults,
            defaults_of=whose,
        )
        + beside
    )


def build_and_step(
    made_by: Any, dtype: torch.dtype, *, fused: bool, steps: int, **arguments: Any
) -> None:
    """An optimizer of `made_by` over one zero weight of `dtype` on the CPU (`fused`: its fused
    implementation), and `steps` steps of it (a closure, as Lightning steps it; two: SGD's first
    step only fills its momentum buffer, dampening is applied from the second): raises what
    torch refuses, in the constructor or in a step, where the run would meet it after its first
    backward passes."""
    weight = torch.zeros(1, dtype=dtype, requires_grad=True)
    optimizer = made_by([weight], **arguments, **({"fused": True} if fused else {}))

    def closure() -> torch.Tensor:
        weight.grad = torch.zeros_like(weight)
        return torch.zeros(())

    try:
        for _ in range(steps):
            optimizer.step(closure)
    except Exception as exc:
        raise ValueError(
            f"its step on {str(dtype).removeprefix('torch.')} weights fails: {exc}"
        ) from exc


def type_problems(
    values: dict[str, Any], signature: inspect.Signature, defaults: dict[str, Any], whose: str
) -> list[str]:
    """Arguments whose value is not of the type of the class's default (or, for a default of
    None, its annotation): a bool for a bool (torch reads any value as one: nesterov=abc ran
    Nesterov, maximize=abc gradient ascent), a number for a number (dampening=abc failed at the
    second step), as many numbers as a tuple of them (Adam's betas: torch ignored a third,
    and one alone was "list index out of range")."""
    problems = []
    for key, v in values.items():
        parameter = signature.parameters[key]
        default, annotation = parameter.default, str(parameter.annotation).replace(" ", "")
        if isinstance(default, bool) and not isinstance(v, bool):
            want = "true or false"
        elif (
            default is None
            and annotation in ("bool|None", "Optional[bool]")
            and not (v is None or isinstance(v, bool))
        ):
            want = "true, false or null"
        elif is_number(default) and not is_number(v):
            want = "a number"
        elif (
            isinstance(default, tuple)
            and all(map(is_number, default))
            and not (
                isinstance(v, list | tuple | ListConfig)
                and len(v) == len(default)
                and all(map(is_number, v))
            )
        ):
            want = f"a list of {len(default)} numbers"
        else:
            continue
        fix = f"{whose}'s default: optimizer.{key}={hydra_value(defaults.get(key, default))}"
        given = repr(v) if isinstance(v, str) else hydra_value(v)  # 'abc', null, true
        problems.append(f"optimizer.{key} must be {want} (got {given}); {fix}")
    return problems


def option_defaults(target: str) -> tuple[str | None, dict[str, Any]]:
    """The conf/optimizer/ option whose _target_ is `target`, and its values (the defaults a run
    of it starts from: SGD's momentum is 0.9 here, 0 in torch); (None, {}) where none is."""
    for option in group_options("optimizer"):
        values = option_values("optimizer", option)
        if values.get("_target_") == target:
            return option, {k: v for k, v in values.items() if k not in OURS}
    return None, {}


def momentum_problems(momentum: Any) -> list[str]:
    """A momentum of 1 or more, which torch takes (SGD, RMSprop): each step then carries all of
    the last one, or more, so the steps never shrink, or grow without bound. The fix is the
    seed's momentum."""
    if not is_number(momentum):  # true, which torch takes as 1; 'abc' or null, a TypeError
        given = repr(momentum) if isinstance(momentum, str) else hydra_value(momentum)
        return [f"optimizer.momentum must be a number below 1 (got {given}); "
                "set optimizer.momentum=0.9"]  # fmt: skip
    if momentum < 1 or not math.isfinite(momentum):  # nan and inf: the finite-number rule's
        return []
    return [
        f"optimizer.momentum must be below 1 (got {momentum}): each step would carry all of the "
        "last one or more, so the steps never shrink; set optimizer.momentum=0.9"
    ]

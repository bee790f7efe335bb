"""The config's keys as a table: one row a key — what it may hold, when it is checked, the fix.

`problems(cfg, rules)` checks every row and words each problem one way: the key, what is
allowed, the value given, the fix (`set key=fix`). Checks that involve several keys are named
functions in config.py; the search's and the bench's own keys have their tables beside them.
"""

from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def key_of(problem: str) -> str:
    """The key a problem line is about: its first word, up to a space or '='."""
    return problem.split(" ", 1)[0].split("=", 1)[0]


def value(cfg: DictConfig, key: str) -> Any:
    """cfg's value at a dotted key; None where a node on the way is absent."""
    return OmegaConf.select(cfg, key, throw_on_missing=False)


Condition = Callable[[DictConfig], bool]


@dataclass(frozen=True)
class Rule:
    """One key: `ok` says whether a value is allowed, `allowed` says it in words (after "must
    be"). Integers word a value of the right type out of range apart: "≥ 1 (got 0)"."""

    key: str
    allowed: str
    ok: Callable[[Any], bool]
    fix: str
    when: Condition | None = None  # checked only where this holds
    in_range: str | None = None  # integers: the wording for a value of the right type
    note: str = ""  # inside the parentheses, after the value: "; 0: off"
    hint: Callable[[Any], str] | None = None  # after them, from the value

    def problem(self, cfg: DictConfig) -> str | None:
        if self.when is not None and not self.when(cfg):
            return None
        v = value(cfg, self.key)
        if self.ok(v):
            return None
        if self.in_range is not None and is_int(v):
            return f"{self.key} must be {self.in_range} (got {v}); set {self.key}={self.fix}"
        hint = self.hint(v) if self.hint is not None else ""
        got = "null" if v is None else repr(v)  # as the command line spells it: not Python's None
        return f"{self.key} must be {self.allowed} (got {got}{self.note}){hint}; set {self.key}={self.fix}"


def problems(cfg: DictConfig, rules: Iterable[Rule]) -> list[str]:
    """Every row's problem with cfg, in the table's order."""
    return [p for rule in rules if (p := rule.problem(cfg)) is not None]


def integer(
    key: str, low: int, fix: int | str, high: int | None = None, when: Condition | None = None
) -> Rule:
    """An integer ≥ low (and ≤ high)."""
    bounds = f"≥ {low}" if high is None else f"in [{low}, {high}]"
    return Rule(
        key, f"an integer {bounds}",
        lambda v: is_int(v) and v >= low and (high is None or v <= high),
        str(fix), when, in_range=bounds,
    )  # fmt: skip


def number(key: str, allowed: str, ok: Callable[[float], bool], fix: str, **kwargs: Any) -> Rule:
    """A number (not a bool) for which `ok` holds. Not inf or nan: those are worded by
    config_limits.number_problems, which checks every key (one line a key)."""
    return Rule(
        key, allowed, lambda v: is_number(v) and (not math.isfinite(v) or ok(v)), fix, **kwargs
    )


def choice(
    key: str, values: tuple[Any, ...], fix: str, allowed: str | None = None, **kwargs: Any
) -> Rule:
    """One of `values`, compared with `is` for bools (1 == True would let 1 through)."""

    def ok(v: Any) -> bool:
        return any(v is c if isinstance(c, bool) or c is None else v == c and not isinstance(v, bool)
                   for c in values)  # fmt: skip

    words = allowed or f"one of {', '.join(map(str, values))}"
    return Rule(key, words, ok, fix, **kwargs)


def flag(key: str, fix: str = "false", when: Condition | None = None) -> Rule:
    """true or false."""
    return choice(key, (True, False), fix, "true or false", when=when)


def equals(key: str, *values: Any) -> Condition:
    """A `when`: the key holds one of `values`."""
    return lambda cfg: value(cfg, key) in values


def locate(target: str) -> Any:
    """What a dotted `_target_` names (a class, a function), as Hydra's instantiate finds it:
    the longest importable module prefix, then attributes. Raises ImportError where nothing
    is; unlike hydra.utils.get_object it logs nothing (it logged three lines of a failed
    import before the pre-flight's one)."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                found = getattr(found, name)
        except AttributeError:
            break
        return found
    raise ImportError(f"nothing importable is named {target}")


def argument_defaults(callable_: Any) -> dict[str, Any]:
    """The keyword arguments of a class or function that have a default, with it."""
    return {
        name: p.default
        for name, p in inspect.signature(callable_).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def hydra_value(value: Any) -> str:
    """A Python default, or a config's value, as a command line's value: [0.9,0.999], null, true;
    a string inside a list quoted ([0.9,'0.99']: unquoted, it read as two numbers), but for a
    ${...} reference, which is one as typed."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple | ListConfig):
        return "[" + ",".join(_in_list(v) for v in value) + "]"
    return str(value)


def _in_list(value: Any) -> str:
    if isinstance(value, str) and not (value.startswith("${") and value.endswith("}")):
        return repr(value)
    return hydra_value(value)


def refused_arguments(
    group: str,
    name: str,
    build: Callable[..., object],
    args: dict[str, Any],
    defaults: dict[str, Any] | None = None,
    defaults_of: str | None = None,
) -> list[str]:
    """What a class refuses among `args` (the `group`.* keys), by building it (`build(**args)`
    raises to refuse): nothing when it takes them all; else a line for each argument it refuses
    alone, or one line for the set when only the combination is refused. `defaults` (by
    argument; whose: `defaults_of`, else the class's) give each line its fix."""
    defaults = defaults or {}
    whose = defaults_of or name

    def refusal(some: dict[str, Any]) -> str | None:
        try:
            build(**some)
        except Exception as exc:  # what libraries raise: ValueError, TypeError, their own…
            return " ".join(str(exc).split()) or type(exc).__name__
        return None

    if refusal(args) is None:
        return []
    alone = [
        f"{group}.{key}={hydra_value(v)} is refused by {name}: {reason.rstrip('.')}"
        + (
            f"; {whose}'s default: {group}.{key}={hydra_value(defaults[key])}"
            if key in defaults
            else ""
        )
        for key, v in args.items()
        if (reason := refusal({key: v})) is not None
    ]
    together = ", ".join(f"{group}.{k}={v}" for k, v in args.items())
    return alone or [f"{name} refuses {together} together: {refusal(args)}"]

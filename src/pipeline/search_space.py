"""A search space: pipeline.train override keys, each with a range in Hydra's sweep syntax.

    optimizer: choice(sgd, adam, adamw)            # Optuna's categorical
    optimizer.lr: tag(log, interval(1e-5, 1e-1))   # a float, drawn on a log scale
    data.batch_size: range(16, 65, 16)             # the listed values, as a categorical
    trainer.max_steps: tag(int, interval(50, 200)) # an integer

`corners` lists the configs at the edges of the space, which pipeline.search validates before
its first trial; `suggest` draws one point from an Optuna trial. A `Plan` is a whole validated
search: its settings, its space, and the pipeline.train overrides every trial shares.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import IntervalSweep, Override, ValueType
from hydra.errors import HydraException

from pipeline.overrides import override, shell_word

if TYPE_CHECKING:
    import optuna

Value = str | int | float | bool | None  # what Optuna's categorical distribution takes
MAX_CORNERS = 64  # beyond this many edge combinations, each parameter's edges are checked alone
SYNTAX = (
    "choice(a, b), range(start, stop, step), interval(low, high), tag(log, interval(low, high))"
)


@dataclass(frozen=True)
class Param:
    """One searched key: a list of `choices`, or a `low`…`high` interval (log scale, integers)."""

    key: str
    choices: tuple[Value, ...] = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    integer: bool = False

    def describe(self) -> str:
        """The range in Hydra's syntax, for messages and the study's record."""
        if self.choices:
            return f"choice({', '.join(str(c) for c in self.choices)})"
        low, high = (int(self.low), int(self.high)) if self.integer else (self.low, self.high)
        tags = [t for t, on in (("int", self.integer), ("log", self.log)) if on]
        interval = f"interval({low}, {high})"
        return f"tag({', '.join(tags)}, {interval})" if tags else interval

    def edges(self) -> tuple[Value, ...]:
        """The values a config must be valid at: every choice, or both ends of the interval."""
        if self.choices:
            return self.choices
        return (int(self.low), int(self.high)) if self.integer else (self.low, self.high)

    def suggest(self, trial: optuna.Trial) -> Value:
        if self.choices:
            return trial.suggest_categorical(self.key, self.choices)
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


def parse_line(line: str) -> tuple[Override | None, str | None]:
    """Hydra's parse of `KEY=VALUE`: (the override, None) or (None, the reason it fails)."""
    try:
        return OverridesParser.create().parse_override(line), None
    except HydraException as exc:
        reason = next((s.strip() for s in str(exc).splitlines() if s.strip()), "")
        return None, reason


def param_of(o: Override) -> tuple[Param | None, str | None]:
    """The Param a sweep override describes: (param, None) or (None, the problem)."""
    key, value = o.get_key_element(), o.value()
    if o.value_type in (
        ValueType.CHOICE_SWEEP,
        ValueType.SIMPLE_CHOICE_SWEEP,
        ValueType.RANGE_SWEEP,
    ):
        choices = tuple(o.sweep_iterator())
        odd = [c for c in choices if not isinstance(c, str | int | float | bool | type(None))]
        if odd:
            return (
                None,
                f"{key}: choices must be plain values (got {odd[0]!r}); list them: choice(a, b)",
            )
        if not choices:
            return None, f"{key}: the range lists no value; give at least one: choice(a, b)"
        return Param(key=key, choices=cast(tuple[Value, ...], choices)), None
    if o.value_type == ValueType.INTERVAL_SWEEP:
        assert isinstance(value, IntervalSweep)  # INTERVAL_SWEEP's value
        assert value.start is not None and value.end is not None  # interval() has both ends
        tags = set(value.tags)
        unknown = tags - {"log", "int"}
        low, high = float(value.start), float(value.end)
        if unknown:
            return (
                None,
                f"{key}: unknown tag {', '.join(sorted(unknown))}; interval() takes tag(log, …) and tag(int, …)",
            )
        if not (math.isfinite(low) and math.isfinite(high)):
            return (
                None,
                f"{key}: interval({value.start}, {value.end}) needs finite ends (nan and inf "
                "are not drawn from); give two numbers",
            )
        if not low < high:
            return (
                None,
                f"{key}: interval({value.start}, {value.end}) needs low < high; swap or widen it",
            )
        if "log" in tags and low <= 0:
            return (
                None,
                f"{key}: a log-scale interval needs low > 0 (got {value.start}); set it to e.g. 1e-6",
            )
        if "int" in tags and not (low.is_integer() and high.is_integer()):
            return (
                None,
                f"{key}: tag(int, …) needs whole-number ends (got {value.start}, {value.end})",
            )
        return Param(key=key, low=low, high=high, log="log" in tags, integer="int" in tags), None
    return (
        None,
        f"{key}={o.get_value_element_as_str()} is not a range to draw from; use one of: {SYNTAX}",
    )


def parse_space(params: Mapping[str, Any]) -> tuple[list[Param], list[str]]:
    """The space from `search.params` (KEY: range in Hydra's syntax): (params, problems)."""
    space, problems = [], []
    for key, text in params.items():
        o, reason = parse_line(f"{key}={text}")
        if o is None:
            problems.append(
                f"search.params.{key}: cannot parse {text!r} ({reason}); write one of: {SYNTAX}"
            )
            continue
        param, problem = param_of(o)
        if problem:
            problems.append(f"search.params.{problem}")
        elif param is not None:
            space.append(param)
    if not space and not problems:
        problems.append(f"search.params is empty: nothing to search; give KEY: {SYNTAX}")
    return space, problems


def as_overrides(values: Mapping[str, Value]) -> list[str]:
    """pipeline.train's overrides that set `values` ({key: value}, as the user gave them: a
    `${…}` in one is an interpolation)."""
    return [override(key, "null" if value is None else value, interpolate=True)
            for key, value in values.items()]  # fmt: skip


def corners(space: list[Param]) -> list[dict[str, Value]]:
    """The points at the space's edges: every combination of choices, with the intervals all at
    their low ends, then all at their high ends; when that is more than MAX_CORNERS points, each
    parameter's edges alone (the others at their first edge)."""
    ranges = [p.choices for p in space if p.choices]
    intervals = [p for p in space if not p.choices]
    n_points = len(list(itertools.islice(itertools.product(*ranges), MAX_CORNERS + 1)))
    if n_points * (2 if intervals else 1) <= MAX_CORNERS:
        return [
            {p.key: v for p, v in zip([q for q in space if q.choices], combo, strict=True)}
            | {p.key: p.edges()[end] for p in intervals}
            for combo in itertools.product(*ranges)
            for end in ((0, 1) if intervals else (0,))
        ]
    first = {p.key: p.edges()[0] for p in space}
    return [first | {p.key: v} for p in space for v in p.edges()]


def suggest(space: list[Param], trial: optuna.Trial) -> dict[str, Value]:
    """One point of the space, drawn by the study's sampler: {key: value}."""
    return {p.key: p.suggest(trial) for p in space}


@dataclass(frozen=True)
class Plan:
    """A validated search: the search.* settings, the space and the fixed train overrides."""

    study: str
    storage: str
    metric: str
    direction: Literal["minimize", "maximize"]
    n_trials: int
    sampler: str
    pruner: dict[str, Any]
    space: list[Param]
    fixed: list[str]  # pipeline.train's overrides, as typed, the same for every trial

    def record(self) -> dict[str, Any]:
        """What makes a later command the same search (kept in the study's user attributes)."""
        return {
            "metric": self.metric,
            "space": [f"{p.key}={p.describe()}" for p in self.space],
            "fixed": sorted(self.fixed),  # their order does not matter to Hydra
        }

    def train_overrides(self, values: dict[str, Value]) -> list[str]:
        return [*self.fixed, *as_overrides(values)]

    def train_command(self, values: dict[str, Value]) -> str:
        words = (shell_word(w) for w in self.train_overrides(values))
        return " ".join(["python -m pipeline.train", *words])

"""The bench's own keys (conf/bench.yaml's bench.*), checked on top of pipeline.train's."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from pipeline.bench.outside import SHORT
from pipeline.bench.variants import feature_variants, parse_knob, with_knob
from pipeline.config import validate
from pipeline.config_absent import absent_key_problems, is_absence_line
from pipeline.config_rules import flag, integer, is_int, key_of
from pipeline.config_rules import problems as rule_problems

_ABSENT = object()
BENCH_RULES = (
    integer("bench.rounds", 1, 5),
    integer("bench.steps", 1, 5),
    integer("bench.warmup_steps", 1, 3),
    integer("bench.soak_steps", 0, 0),
    integer("bench.soak_every", 1, 1000),
    integer("bench.overhead_steps", 0, 0),
    integer("bench.outside_rounds", 0, 0),
    integer("bench.outside_steps", SHORT + 1, 44),  # steps past the short run's to subtract
    flag("bench.data_only"),  # a string was taken as true ('maybe': the data path alone)
    flag("bench.startup"),
)
# The modes that measure instead of the interleaved benchmark (modes.measure): one a command
MODES = ("bench.soak_steps", "bench.overhead_steps", "bench.outside_rounds", "bench.data_only")


# The bench's keys its checks below read, besides those of its rules.
READ_KEYS = ("bench.features", "bench.knobs", "bench.output")
# The sections the bench's own checks read (~trainer crashed them: review; ~bench.outside_rounds
# too: a key of its own, removed, was read as null by its rule and then crashed the check of it).
READ_BELOW = ("bench", "trainer", "callbacks", "loss", "optimizer", "device")


def validate_bench(cfg: DictConfig) -> list[str]:
    """Every problem of the config, the train's and the bench's: one line each, with the fix."""
    problems = validate(cfg)
    problems += absent_key_problems(
        cfg, rule_problems(cfg, BENCH_RULES), [*(r.key for r in BENCH_RULES), *READ_KEYS]
    )
    problems += mode_problems(cfg, problems)
    if any(key_of(p).split(".")[0] in READ_BELOW and is_absence_line(p) for p in problems):
        return problems  # the checks below read those keys: not where one is missing
    features, known_features = cfg.bench.features, list(feature_variants(cfg))
    if not isinstance(features, bool) and not (
        OmegaConf.is_list(features) and all(f in known_features for f in features)
    ):
        problems.append(
            f"bench.features must be true, false or a list of {', '.join(known_features)} "
            f"(got {OmegaConf.to_container(features) if OmegaConf.is_list(features) else features!r}); "
            "set 'bench.features=[norms]'"
        )
    knobs = cfg.bench.knobs
    if not OmegaConf.is_list(knobs) or not all(isinstance(k, str) for k in knobs):
        problems.append(
            f"bench.knobs must be a list of KEY=VALUE strings (got {knobs!r}); "
            "set 'bench.knobs=[\"model.channels_last=true\"]'"
        )
    else:
        for knob in knobs:
            problems += knob_problems(cfg, knob, problems)
    if cfg.bench.outside_rounds and cfg.loss.name != "mse":
        problems.append(
            f"bench.outside_rounds times {_long_runs(cfg)} against a plain loop script that trains "
            f"with mse (the seed's loss overflows by then); set loss=mse (got loss={cfg.loss.name})"
        )
    if cfg.bench.outside_rounds and cfg.optimizer._target_ != "torch.optim.SGD":
        problems.append(
            "bench.outside_rounds times a plain loop script that trains with SGD, as the notebook "
            f"does; set optimizer=sgd (got {cfg.optimizer._target_})"
        )
    if cfg.bench.output is not None:
        problems += output_file_problems("bench.output", str(cfg.bench.output))
    if cfg.device.strategy == "ddp":
        problems.append(
            f"device={cfg.device.name}: the bench runs one process; set device=cpu or device=gpu"
        )
    return problems


def _long_runs(cfg: DictConfig) -> str:
    """The outside mode's long runs, in words: by their steps where bench.outside_steps is valid."""
    steps = cfg.bench.outside_steps
    return (
        f"{steps}-step runs" if is_int(steps) and steps > SHORT else "runs of bench.outside_steps"
    )


def mode_problems(cfg: DictConfig, known: list[str]) -> list[str]:
    """More than one mode set: the bench ran the first (soak, overhead, outside, data path) and
    dropped the others without a word. Modes whose value is refused (`known`) aside."""
    given = [
        f"{key}={OmegaConf.select(cfg, key)}".replace("True", "true")
        for key in MODES
        if OmegaConf.select(cfg, key) not in (0, False, None)
        and not any(p.startswith(key) for p in known)
    ]
    if len(given) < 2:
        return []
    return [
        f"{' and '.join(given)} each choose what the bench measures, and it measures one a "
        "command; keep one of them"
    ]


def knob_problems(cfg: DictConfig, knob: str, known: list[str]) -> list[str]:
    """What is wrong with one bench.knobs entry: its form, its key, or the config it makes
    (less the problems `known` already names)."""
    try:
        key, _ = parse_knob(knob)
    except ValueError as exc:
        return [str(exc)]
    if OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
        return [f"bench.knobs entry {knob!r}: the config has no key {key}"]
    return [
        f"bench.knobs entry {knob!r}: {p}" for p in validate(with_knob(cfg, knob)) if p not in known
    ]


def output_file_problems(key: str, path: str) -> list[str]:
    """A file the figures are written to once measured: checked before, so a bench does not run
    for minutes and then fail on its path."""
    target = Path(path)
    if target.is_dir():
        return [f"{key}={path} is a folder; name a file, e.g. {key}={target / 'bench.json'}"]
    if not target.parent.is_dir():
        return [f"{key}={path}: the folder {target.parent} does not exist; create it first"]
    if not os.access(target.parent, os.W_OK) or (
        target.exists() and not os.access(target, os.W_OK)
    ):
        return [f"{key}={path} cannot be written here (permissions); name a file you can write"]
    return []

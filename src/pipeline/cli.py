"""The command line in front of @hydra.main: compose and validate every job before any runs.

Hydra reports an unknown group option or key with a long message and exit 1; the pipeline
turns them, and every problem `validate` finds, into one line each and exit 2 — for every job
of a sweep, before the first one starts. It also lets `trainer.NAME=VALUE` pass any
lightning.Trainer argument without Hydra's `+` prefix.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig

from pipeline import report
from pipeline.config_dir import config_groups
from pipeline.config_rules import hydra_value
from pipeline.errors import CONFIG_ERROR_EXIT_CODE
from pipeline.launch_rank import launch_problems
from pipeline.override_checks import (
    as_typed,
    check_group_choices,
    compose,
    expand_globs,
    one_line,
    removed_groups,
    resolve_keys,
    stray_words,
    unparsable,
    unresolvable,
)
from pipeline.problem_report import report_problems
from pipeline.resume import expand_resume, restart_line
from pipeline.run_claim import own_run_dir

__all__ = ["command_line", "compose", "preflight", "prepare", "report_problems", "run"]

HYDRA_INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion")
Validator = Callable[[DictConfig], list[str]]


def _check_job(
    config_name: str, job: list[Override], validate: Validator
) -> tuple[list[str], list[str]]:
    """(the job's overrides as Hydra should see them, its problems)."""
    groups = config_groups()
    choices = [as_typed(o) for o in job if o.key_or_group in groups]
    try:
        base = compose(config_name, choices)
        rewritten, problems = resolve_keys(job, base)
        if problems:
            return rewritten, problems
        cfg = compose(config_name, rewritten)
    except HydraException as exc:
        return [as_typed(o) for o in job], [one_line(exc)]
    broken = unresolvable(cfg, removed=[o.key_or_group for o in job if o.is_delete()])
    if broken:
        return rewritten, broken
    return rewritten, validate(cfg)


def as_typed_jobs(parsed: list[Override], jobs: list[list[str]]) -> list[tuple[list[str], str]]:
    """Each job of a sweep (BasicSweeper's strings: one a key, in its order) with the command
    line's own words for what it does not sweep (Hydra writes optimizer.nesterov=true as
    "=True", which a problem would echo), and its label: the values it sweeps, as a command
    line gives them (optimizer=adam data.batch_size=0, optimizer.betas=[true,false])."""
    last = {o.get_key_element(): o for o in parsed}  # a later override of a key replaces it
    parser, labelled = OverridesParser.create(), []
    for job in jobs:
        words, swept = [], []
        for word, o in zip(job, last.values(), strict=True):
            words.append(word if o.is_sweep_override() else as_typed(o))
            if o.is_sweep_override():
                swept.append(
                    f"{o.get_key_element()}={hydra_value(parser.parse_override(word).value())}"
                )
        labelled.append((words, " ".join(swept)))
    return labelled


def jobs_named(labels: list[str], most: int = 3) -> str:
    """'in the job a=1', 'in the jobs a=1, a=2 and a=3', and past `most`, 'and N more'."""
    if len(labels) == 1:
        return f"in the job {labels[0]}"
    named = labels[:most]
    rest = f"{len(labels) - most} more" if len(labels) > most else named.pop()
    return f"in the jobs {', '.join(named)} and {rest}"


def preflight(
    config_name: str, overrides: list[str], multirun: bool, validate: Validator
) -> tuple[list[str], list[str]]:
    """(overrides to run with, problems): every job of a sweep composed and validated."""
    parser = OverridesParser.create()
    try:
        overrides, problems = expand_globs(parser.parse_overrides(overrides))
        parsed = parser.parse_overrides(overrides)
    except HydraException as exc:
        return overrides, unparsable(overrides) or [f"cannot parse the overrides: {one_line(exc)}"]
    problems += check_group_choices(parsed) + removed_groups(parsed, config_name)
    if problems:
        return overrides, problems
    try:
        jobs = (
            [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
            if multirun
            else [overrides]
        )
    except HydraException as exc:  # interval(): only a search sweeper draws from a range
        intervals = [o for o in parsed if o.value_type == ValueType.INTERVAL_SWEEP]
        return overrides, [
            f"{as_typed(o)}: Hydra's basic sweeper runs listed values, and interval() is a range "
            f"only a search sweeper draws from; list the values: {o.key_or_group}=a,b,c"
            for o in intervals
        ] or [one_line(exc)]
    labelled = as_typed_jobs(parsed, jobs) if multirun else [(overrides, "")]
    in_jobs: dict[str, list[str]] = {}  # each problem, and the jobs (by their swept values) with it
    for job, label in labelled:
        for problem in _check_job(config_name, parser.parse_overrides(job), validate)[1]:
            in_jobs.setdefault(problem, []).append(label)
    problems += [p if len(labels) == len(labelled) else f"{jobs_named(labels)}: {p}"
                 for p, labels in in_jobs.items()]  # fmt: skip
    if problems:
        return overrides, problems
    # Keys do not depend on sweep values: the command line's own overrides, rewritten once.
    first_choices = [
        o for o in parser.parse_overrides(jobs[0]) if o.key_or_group in config_groups()
    ]
    base = compose(config_name, [as_typed(o) for o in first_choices])
    return resolve_keys(parsed, base)[0], []


def prepare(
    config_name: str, given: list[str], multirun: bool, validate: Validator, claim: bool = True
) -> tuple[list[str], list[str]]:
    """The command line's overrides as the @hydra.main app should get them, and the problems.
    `claim`: the run directory too (not for a command that only shows the config), and the
    launch environment checked with the command line (launch_rank.launch_problems)."""
    launch = launch_problems() if claim else []
    problems = stray_words(given)
    if problems:
        return given, launch + problems
    resume = expand_resume(given)
    if resume.problems:
        return given, launch + resume.problems
    overrides, problems = preflight(config_name, resume.overrides, multirun, validate)
    problems = launch + problems
    if problems or multirun or not claim:
        return overrides, problems
    overrides, problems = own_run_dir(config_name, overrides, resume.run_dir)
    if resume.restart and resume.run_dir is not None and not problems:
        report.show_line(restart_line(resume.run_dir))
    return overrides, problems


# The command line as typed, before run() rewrites sys.argv: one entry once run() has begun (an
# empty command line is one too: `_typed or sys.argv` recorded a bare run's pinned run directory).
_typed: list[list[str]] = []


def _no_rules(cfg: DictConfig) -> list[str]:
    """The validator of a command that only shows the config: its values' rules are not applied."""
    return []


def command_line() -> list[str]:
    """The command as the user typed it (resume= unexpanded), for the run's provenance."""
    program = Path(sys.argv[0]).name
    head = (
        ["python", "-m", f"pipeline.{Path(program).stem}"] if program.endswith(".py") else [program]
    )
    return [*head, *(_typed[0] if _typed else sys.argv[1:])]


def parse_command_line() -> Any:
    """sys.argv as Hydra's own parser reads it (flags, and the overrides), with flags anywhere:
    `… optimizer.lr=0.1,1 -m seed=1` too, which Hydra's parse_args refuses ("unrecognized
    arguments: seed=1") once overrides follow a flag."""
    return get_args_parser().parse_intermixed_args(sys.argv[1:])


def run(hydra_app: Callable[[], Any], config_name: str, program: str, validate: Validator) -> None:
    """Check the command line, claim the run directory, then hand over to the @hydra.main app."""
    argv = sys.argv[1:]
    _typed[:] = [argv]
    args = parse_command_line()
    overrides = list(args.overrides)
    shows = any(getattr(args, flag, None) for flag in HYDRA_INFO_FLAGS)
    if not getattr(args, "shell_completion", None):
        # --cfg, --info and --help show the config the command line makes: resume= expanded,
        # trainer.NAME=VALUE without Hydra's +, every key and option checked; not validated
        # (`--cfg job device=gpu` shows a GPU run's config on a CPU) and no run directory made.
        if shows and args.multirun:  # Hydra's traceback: it shows one config
            problems = [
                "--cfg, --info and --help show one job's config, and -m runs a sweep: drop -m "
                "(and give each swept key one value)"
            ]
        else:
            overrides, problems = prepare(
                config_name, overrides, bool(args.multirun), _no_rules if shows else validate,
                claim=not shows,
            )  # fmt: skip
        if problems:
            report_problems(problems, program)
            sys.exit(CONFIG_ERROR_EXIT_CODE)
    flags = [a for a in argv if a not in args.overrides]
    sys.argv = [sys.argv[0], *flags, *overrides]  # flags first: Hydra parses them in that order
    hydra_app()

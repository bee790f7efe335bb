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

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.utils import get_args_parser
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pipeline.config import CONFIG_DIR, config_groups, group_options, trainer_arguments
from pipeline.errors import CONFIG_ERROR_EXIT_CODE
from pipeline.rundir import (
    RUN_DIR_HANDOVER_TIMEOUT_S,
    HandoverError,
    claim_run_dir,
    hand_over_run_dir,
    receive_run_dir,
    torchrun_rank,
)

HYDRA_INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion")
Validator = Callable[[DictConfig], list[str]]


def _line(o: Override) -> str:
    """The override as the user typed it."""
    return o.input_line or ""


def _value_text(o: Override) -> str:
    return _line(o).split("=", 1)[1] if "=" in _line(o) else ""


def check_group_choices(overrides: list[Override]) -> list[str]:
    """An unknown option of one of our groups, with the valid ones listed."""
    groups = config_groups()
    problems = []
    for o in overrides:
        group = o.key_or_group
        if group not in groups or o.is_delete():
            continue
        values = (
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]  # as typed: null, not None
        )
        options = group_options(group)
        for v in values:
            if v not in options:  # null too: Hydra fails on a group set to null, with a traceback
                problems.append(
                    f"{group}={v} is not an option of {group}; choose one of: {', '.join(options)}"
                )
    return problems


def has_key(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted `key` exists in `cfg`, whatever its value (`???` included)."""
    parent, _, name = key.rpartition(".")
    node = OmegaConf.select(cfg, parent, default=None) if parent else cfg
    return isinstance(node, DictConfig) and name in node.keys()  # noqa: SIM118 (`in node` is False for ???)


def resolve_keys(overrides: list[Override], base: DictConfig) -> tuple[list[str], list[str]]:
    """Overrides as Hydra should see them, and the unknown keys as problems.

    `trainer.NAME=V` for a lightning.Trainer argument missing from the config becomes
    `+trainer.NAME=V`; any other unknown key is a problem naming the keys that exist there.
    """
    groups = config_groups()
    rewritten, problems = [], []
    for o in overrides:
        key = o.key_or_group
        plain = o.package is None and not (o.is_add() or o.is_delete() or o.is_force_add())
        known = has_key(base, key)
        if not plain or known or key in groups or key.startswith("hydra") or "/" in key:
            rewritten.append(_line(o))
            continue
        parent, _, name = key.rpartition(".")
        if parent == "trainer" and name in trainer_arguments():
            rewritten.append("+" + _line(o))
            continue
        node = OmegaConf.select(base, parent) if parent else base
        keys = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
        where = f"{parent} has: {keys}" if parent else f"top-level keys: {keys}"
        problems.append(
            f"{key} is not a config key (got {key}={_value_text(o)}); {where}; fix the spelling"
        )
    return rewritten, problems


def _compose(config_name: str, overrides: list[str], with_hydra: bool = False) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=with_hydra)
    finally:
        GlobalHydra.instance().clear()


def claim_planned_run_dir(config_name: str, overrides: list[str]) -> tuple[list[str], list[str]]:
    """Pin hydra.run.dir to a directory this run created: (overrides, problems).

    Left to the user when they set it, and to Lightning in its DDP children (which get the
    parent's directory). Under torchrun, rank 0 claims and hands it to the other ranks through
    torch's store, on any node.
    """
    if any(o.startswith("hydra.run.dir=") for o in overrides):
        return overrides, []
    wanted = Path(
        str(OmegaConf.select(_compose(config_name, overrides, with_hydra=True), "hydra.run.dir"))
    )
    rank = torchrun_rank()
    if rank:  # torchrun, not rank 0
        try:
            shared = receive_run_dir(RUN_DIR_HANDOVER_TIMEOUT_S)
        except HandoverError as exc:
            return overrides, [f"torchrun rank {rank}: {exc}"]
        return [
            *overrides,
            f"hydra.run.dir={shared}",
            f"hydra.job.name=train_rank{rank}",
            "hydra.output_subdir=null",
        ], []
    try:
        claimed = claim_run_dir(wanted)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return overrides, [
            f"cannot create the run directory {wanted} ({reason}); run from a writable directory "
            "or set hydra.run.dir=/a/writable/path"
        ]
    if rank == 0:
        try:
            hand_over_run_dir(claimed, RUN_DIR_HANDOVER_TIMEOUT_S)
        except HandoverError as exc:
            return overrides, [f"torchrun rank 0: {exc}"]
    return [*overrides, f"hydra.run.dir={claimed}"], []


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__


def unresolvable(node: DictConfig, prefix: str = "") -> list[str]:
    """Every value whose ${...} reference does not resolve, one line each (??? is left to validation)."""
    problems = []
    for name in node.keys():  # noqa: SIM118 (`for k in node` skips ??? values)
        key = f"{prefix}{name!s}"
        try:
            value = node[name]
        except MissingMandatoryValue:
            continue
        except OmegaConfBaseException as exc:
            reason = str(exc).strip().splitlines()[0]
            problems.append(f"{key}: {reason}; fix or remove the ${{...}} reference")
            continue
        if isinstance(value, DictConfig):
            problems += unresolvable(value, f"{key}.")
    return problems


def _check_job(
    config_name: str, job: list[Override], validate: Validator
) -> tuple[list[str], list[str]]:
    """(the job's overrides as Hydra should see them, its problems)."""
    groups = config_groups()
    choices = [_line(o) for o in job if o.key_or_group in groups or o.is_add()]
    try:
        base = _compose(config_name, choices)
        rewritten, problems = resolve_keys(job, base)
        if problems:
            return rewritten, problems
        cfg = _compose(config_name, rewritten)
    except HydraException as exc:
        return [_line(o) for o in job], [_one_line(exc)]
    broken = unresolvable(cfg)
    if broken:
        return rewritten, broken
    return rewritten, validate(cfg)


def preflight(
    config_name: str, overrides: list[str], multirun: bool, validate: Validator
) -> tuple[list[str], list[str]]:
    """(overrides to run with, problems): every job of a sweep composed and validated."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as exc:
        return overrides, [f"cannot parse the overrides: {_one_line(exc)}"]
    problems = check_group_choices(parsed)
    if problems:
        return overrides, problems
    jobs = (
        [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        if multirun
        else [overrides]
    )
    for job in jobs:
        _, job_problems = _check_job(config_name, parser.parse_overrides(job), validate)
        problems += [p for p in job_problems if p not in problems]
    if problems:
        return overrides, problems
    # Keys do not depend on sweep values: the command line's own overrides, rewritten once.
    first_choices = [
        o for o in parser.parse_overrides(jobs[0]) if o.key_or_group in config_groups()
    ]
    base = _compose(config_name, [_line(o) for o in first_choices])
    return resolve_keys(parsed, base)[0], []


def report_problems(problems: list[str], program: str) -> None:
    """One line per problem on stderr, under a header naming the program."""
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"{program}: {len(problems)} config {noun}:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)


RESUME_KEY = "resume="


def expand_resume(overrides: list[str]) -> tuple[list[str], list[str]]:
    """`resume=<run dir>` → that run's saved overrides, then the command line's, then its
    last.ckpt and its directory: (overrides, problems)."""
    wanted = [o for o in overrides if o.startswith(RESUME_KEY)]
    if not wanted:
        return overrides, []
    run_dir = Path(wanted[-1][len(RESUME_KEY) :]).expanduser()
    saved, ckpt = run_dir / ".hydra" / "overrides.yaml", run_dir / "checkpoints" / "last.ckpt"
    if not (saved.is_file() and ckpt.is_file()):
        return overrides, [
            f"resume={run_dir} is not a run directory with .hydra/overrides.yaml and checkpoints/last.ckpt; "
            "give a folder under outputs/"
        ]
    previous = [
        str(o)
        for o in OmegaConf.load(saved)
        if not str(o).startswith(("hydra.run.dir=", "ckpt_path="))
    ]
    rest = [o for o in overrides if not o.startswith(RESUME_KEY)]
    return [*previous, *rest, f"ckpt_path={ckpt}", f"hydra.run.dir={run_dir}"], []


def run(hydra_app: Callable[[], Any], config_name: str, program: str, validate: Validator) -> None:
    """Check the command line, claim the run directory, then hand over to the @hydra.main app."""
    argv = sys.argv[1:]
    args = get_args_parser().parse_args(argv)
    if not any(getattr(args, flag, None) for flag in HYDRA_INFO_FLAGS):
        overrides, problems = expand_resume(list(args.overrides))
        if not problems:
            overrides, problems = preflight(config_name, overrides, bool(args.multirun), validate)
        if not problems and not args.multirun:
            overrides, problems = claim_planned_run_dir(config_name, overrides)
        if problems:
            report_problems(problems, program)
            sys.exit(CONFIG_ERROR_EXIT_CODE)
        flags = [a for a in argv if a not in args.overrides]
        sys.argv = [sys.argv[0], *flags, *overrides]
    hydra_app()

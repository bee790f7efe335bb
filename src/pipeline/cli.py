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
from hydra.core.override_parser.types import Glob, Override, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pipeline.config import CONFIG_DIR, config_groups, group_options, trainer_arguments
from pipeline.config_limits import disk_problems
from pipeline.errors import CONFIG_ERROR_EXIT_CODE
from pipeline.overrides import override, shell_word
from pipeline.resume import expand_resume
from pipeline.rundir import (
    RUN_DIR_HANDOVER_TIMEOUT_S,
    HandoverError,
    RunDirInUse,
    claim_run_dir,
    hand_over_run_dir,
    holds_run,
    is_launch_rank_zero,
    is_slurm_requeue,
    lock_run_dir,
    receive_run_dir,
    release_run_dir,
    torchrun_rank,
)

HYDRA_INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion")
Validator = Callable[[DictConfig], list[str]]


def _line(o: Override) -> str:
    """The override as the user typed it."""
    return o.input_line or ""


def expand_globs(overrides: list[Override]) -> tuple[list[str], list[str]]:
    """`group=glob(pattern)` → `group=a,b` with the options it matches: (overrides, problems).
    Hydra's sweeper expands globs only with its config loader, which the pre-flight has not."""
    groups = config_groups()
    expanded, problems = [], []
    for o in overrides:
        if o.value_type != ValueType.GLOB_CHOICE_SWEEP:
            expanded.append(_line(o))
            continue
        if o.key_or_group not in groups:
            problems.append(
                f"{_line(o)}: glob() chooses among a config group's options, and {o.key_or_group} "
                f"is not a group (groups: {', '.join(groups)}); list the values: {o.key_or_group}=a,b"
            )
            continue
        options = group_options(o.key_or_group)
        glob = o.value()
        assert isinstance(glob, Glob)  # GLOB_CHOICE_SWEEP's value
        matched = glob.filter(options)
        if not matched:
            problems.append(
                f"{_line(o)} matches no option of {o.key_or_group}; its options: {', '.join(options)}"
            )
            continue
        expanded.append(f"{o.get_key_element()}={','.join(matched)}")
    return expanded, problems


def removed_groups(overrides: list[Override], config_name: str) -> list[str]:
    """`~group` for a group every run needs (an optional group, like experiment, may go)."""
    base = _compose(config_name, [])
    return [
        f"{_line(o)} removes the {o.key_or_group} group, which every run needs; choose one of its "
        f"options instead: {o.key_or_group}={'|'.join(group_options(o.key_or_group))}"
        for o in overrides
        if o.is_delete() and o.key_or_group in config_groups() and has_key(base, o.key_or_group)
    ]


def check_group_choices(overrides: list[Override]) -> list[str]:
    """An unknown option of one of our groups, with the valid ones listed."""
    groups = config_groups()
    problems = []
    for o in overrides:
        group = o.key_or_group
        if group not in groups or o.is_delete():
            continue
        typed = (
            list(o.sweep_string_iterator())
            if o.is_sweep_override()
            else [o.get_value_element_as_str()]  # as typed: null, not None
        )
        options = group_options(group)
        values = []
        for v in typed:
            if v.startswith("[") and v.endswith("]"):  # several at once: logger=[tensorboard,csv]
                chosen = [x.strip() for x in v[1:-1].split(",") if x.strip()]
                if not chosen:
                    problems.append(
                        f"{group}={v} chooses no option; choose one or more of: {', '.join(options)}"
                    )
                values += chosen
            else:
                values.append(v)
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
        passes = o.package is not None or o.is_delete() or key in groups or "/" in key
        if passes or key.startswith("hydra") or has_key(base, key):
            rewritten.append(_line(o))
            continue
        parent, _, name = key.rpartition(".")
        added = o.is_add() or o.is_force_add()
        if parent == "trainer" and name in trainer_arguments():
            rewritten.append(_line(o) if added else "+" + _line(o))
            continue
        if added and parent in ("trainer", "optimizer"):
            rewritten.append(_line(o))  # config.py checks that the class takes the argument
            continue
        node = OmegaConf.select(base, parent) if parent else base
        keys = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
        where = (
            f"{parent} has: {keys or 'no keys'}"
            if parent and has_key(base, parent)
            else f"top-level keys: {', '.join(str(k) for k in base)}"
        )
        problems.append(f"{key} is not a config key (got {_line(o)}); {where}; fix the spelling")
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
            override("hydra.run.dir", shared),
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
    return [*overrides, override("hydra.run.dir", claimed)], []


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
    choices = [_line(o) for o in job if o.key_or_group in groups]
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


def unparsable(overrides: list[str]) -> list[str]:
    """Each override Hydra's grammar refuses, with the quoting that makes a value one string."""
    parser, problems = OverridesParser.create(), []
    for line in overrides:
        try:
            parser.parse_override(line)
        except HydraException as exc:
            key, _, value = line.partition("=")
            hint = (
                f"; quote the value: {shell_word(override(key, value))}"
                if not value.isascii() or " " in value
                else ""
            )
            shown = line.replace(
                "\n", "\\n"
            )  # one line per problem, even for a value with a newline
            problems.append(f"cannot parse {shown}: {_one_line(exc)}{hint}")
    return problems


def preflight(
    config_name: str, overrides: list[str], multirun: bool, validate: Validator
) -> tuple[list[str], list[str]]:
    """(overrides to run with, problems): every job of a sweep composed and validated."""
    parser = OverridesParser.create()
    try:
        overrides, problems = expand_globs(parser.parse_overrides(overrides))
        parsed = parser.parse_overrides(overrides)
    except HydraException as exc:
        return overrides, unparsable(overrides) or [f"cannot parse the overrides: {_one_line(exc)}"]
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
            f"{_line(o)}: Hydra's basic sweeper runs listed values, and interval() is a range "
            f"only a search sweeper draws from; list the values: {o.key_or_group}=a,b,c"
            for o in intervals
        ] or [_one_line(exc)]
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


def stray_words(overrides: list[str]) -> list[str]:
    """Words that are not KEY=VALUE: mostly a path with spaces the shell split in two."""
    problems = []
    for before, word in zip(["", *overrides], overrides, strict=False):
        if "=" in word or word.startswith("~"):
            continue
        hint = (
            f"; a value with spaces must be quoted as one argument: '{before} {word}'"
            if "=" in before
            else ""
        )
        problems.append(f"'{word}' is not KEY=VALUE{hint}")
    return problems


def run_dir_of(overrides: list[str]) -> Path:
    """The value of the last hydra.run.dir= override, unquoted as Hydra reads it."""
    line = next(o for o in reversed(overrides) if o.startswith("hydra.run.dir="))
    return Path(str(OverridesParser.create().parse_override(line).value()))


def own_run_dir(
    config_name: str, overrides: list[str], resuming: Path | None
) -> tuple[list[str], list[str]]:
    """Claim the run directory for this process: (overrides, problems). A directory that already
    holds a run is refused unless this is a resume of it (or SLURM's requeue of its job), and a
    directory another live process holds is refused; the disk must hold the checkpoints."""
    explicit = any(o.startswith("hydra.run.dir=") for o in overrides)
    existed = explicit and run_dir_of(overrides).exists()
    overrides, problems = claim_planned_run_dir(config_name, overrides)
    if problems or not is_launch_rank_zero():
        return overrides, problems
    run_dir = run_dir_of(overrides)
    if explicit and resuming is None and holds_run(run_dir) and not is_slurm_requeue():
        return overrides, [
            f"hydra.run.dir={run_dir} already holds a run; continue it with "
            f"{shell_word(f'resume={run_dir}')}, or choose a new directory"
        ]
    try:
        lock_run_dir(run_dir)
    except RunDirInUse as exc:
        return overrides, [
            f"the run directory {run_dir} is in use by another live process (pid {exc}); "
            "wait for it to end, or choose another hydra.run.dir"
        ]
    except OSError as exc:
        return overrides, [
            f"cannot create the run directory {run_dir} ({exc.strerror or exc}); run from a "
            "writable directory or set hydra.run.dir=/a/writable/path"
        ]
    cfg = _compose(config_name, overrides)
    problems = disk_problems(cfg, run_dir) if has_key(cfg, "optimizer") else []  # eval saves none
    if problems and not existed:  # leave nothing behind
        release_run_dir(run_dir)
    return overrides, problems


def prepare(
    config_name: str, given: list[str], multirun: bool, validate: Validator
) -> tuple[list[str], list[str]]:
    """The command line's overrides as the @hydra.main app should get them, and the problems."""
    problems = stray_words(given)
    if problems:
        return given, problems
    resume = expand_resume(given)
    if resume.problems:
        return given, resume.problems
    overrides, problems = preflight(config_name, resume.overrides, multirun, validate)
    if problems or multirun:
        return overrides, problems
    return own_run_dir(config_name, overrides, resume.run_dir)


_typed: list[str] = []  # the command line as typed, before run() rewrites sys.argv


def command_line() -> list[str]:
    """The command as the user typed it (resume= unexpanded), for the run's provenance."""
    program = Path(sys.argv[0]).name
    head = (
        ["python", "-m", f"pipeline.{Path(program).stem}"] if program.endswith(".py") else [program]
    )
    return [*head, *(_typed or sys.argv[1:])]


def parse_command_line() -> Any:
    """sys.argv as Hydra's own parser reads it (flags, and the overrides)."""
    return get_args_parser().parse_args(sys.argv[1:])


def run(hydra_app: Callable[[], Any], config_name: str, program: str, validate: Validator) -> None:
    """Check the command line, claim the run directory, then hand over to the @hydra.main app."""
    argv = sys.argv[1:]
    _typed[:] = argv
    args = parse_command_line()
    if not any(getattr(args, flag, None) for flag in HYDRA_INFO_FLAGS):
        overrides, problems = prepare(
            config_name, list(args.overrides), bool(args.multirun), validate
        )
        if problems:
            report_problems(problems, program)
            sys.exit(CONFIG_ERROR_EXIT_CODE)
        flags = [a for a in argv if a not in args.overrides]
        sys.argv = [sys.argv[0], *flags, *overrides]
    hydra_app()

"""What the pre-flight checks in the command line's overrides, before any job runs: globs, group
options, removed groups, unknown keys (with `trainer.NAME=V` passed through), unresolvable
${...} references, unparsable words. Each check returns one line a problem; `compose` is the
one way the pre-flight (and tests) compose a config.
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import re
from collections.abc import Iterable
from typing import Any

import yaml
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from pipeline.config_dir import CONFIG_DIR, config_groups, group_options, option_values
from pipeline.config_rules import locate
from pipeline.config_trainer import trainer_arguments
from pipeline.overrides import override, shell_word


def as_typed(o: Override) -> str:
    """The override as the user typed it."""
    return o.input_line or ""


def expand_globs(overrides: list[Override]) -> tuple[list[str], list[str]]:
    """`group=glob(pattern)` → `group=a,b` with the options it matches: (overrides, problems).
    Hydra's sweeper expands globs only with its config loader, which the pre-flight has not."""
    groups = config_groups()
    expanded, problems = [], []
    for o in overrides:
        if o.value_type != ValueType.GLOB_CHOICE_SWEEP:
            expanded.append(as_typed(o))
            continue
        if o.key_or_group not in groups:
            problems.append(
                f"{as_typed(o)}: glob() chooses among a config group's options, and {o.key_or_group} "
                f"is not a group (groups: {', '.join(groups)}); list the values: {o.key_or_group}=a,b"
            )
            continue
        options = group_options(o.key_or_group)
        glob = o.value()
        assert isinstance(glob, Glob)  # GLOB_CHOICE_SWEEP's value
        matched = glob.filter(options)
        if not matched:
            problems.append(
                f"{as_typed(o)} matches no option of {o.key_or_group}; its options: {', '.join(options)}"
            )
            continue
        expanded.append(f"{o.get_key_element()}={','.join(matched)}")
    return expanded, problems


def removed_groups(overrides: list[Override], config_name: str) -> list[str]:
    """`~group` for a group every run needs (an optional group, like experiment, may go)."""
    if not any(o.is_delete() for o in overrides):
        return []
    base = compose(config_name, [])
    return [
        f"{as_typed(o)} removes the {o.key_or_group} group, which every run needs; choose one of its "
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


def options_with_key(group: str, name: str) -> list[str]:
    """The options of a config group whose YAML has top-level key `name`."""
    return [option for option in group_options(group) if name in option_values(group, option)]


@functools.cache
def optimizer_class_arguments(target: str) -> frozenset[str]:
    """The keyword arguments of the optimizer class `target` names (none where it names no
    class: config.py says so), but `params`, which the module passes. Once a process for each
    class: a sweep's every job, each option's class and the build ask."""
    try:
        return frozenset(inspect.signature(locate(target)).parameters) - {"params"}
    except Exception:
        return frozenset()


def optimizer_targets(overrides: list[Override], base: DictConfig) -> list[str]:
    """The optimizer classes a command names: its optimizer._target_=… (each of a sweep's: a
    multirun of torch.optim.Adam,torch.optim.AdamW), else the config's."""
    given = [o for o in overrides if o.key_or_group == "optimizer._target_"]
    if not given:
        return [str(OmegaConf.select(base, "optimizer._target_"))]
    last = given[-1]
    return list(last.sweep_string_iterator()) if last.is_sweep_override() else [str(last.value())]


def resolve_keys(overrides: list[Override], base: DictConfig) -> tuple[list[str], list[str]]:
    """Overrides as Hydra should see them, and the unknown keys as problems.

    `trainer.NAME=V` for a lightning.Trainer argument missing from the config becomes
    `+trainer.NAME=V`; any other unknown key is a problem naming the keys that exist there.
    """
    groups = config_groups()
    rewritten, problems = [], []
    # Each class's arguments (of any, for a sweep: each job's own check refuses what its lacks)
    takes = set().union(*map(optimizer_class_arguments, optimizer_targets(overrides, base)))
    added_keys: set[str] = set()  # keys the command line adds before a later override's turn
    nulled: dict[str, bool] = {}  # keys the command line sets before a later override: to null?
    for o in overrides:
        key = o.key_or_group
        plain_key = o.package is None and key not in groups and "/" not in key
        removes = o.is_delete() and plain_key and not key.startswith("hydra")
        if removes and not has_key(base, key) and key not in added_keys:
            # Hydra's line had no fix: "Could not delete from config. '…' does not exist."
            problems.append(f"{as_typed(o)}: the config has no {key} to remove; drop it")
            continue
        if removes and nulled.get(key, OmegaConf.select(base, key) is None):
            # Hydra takes a null value for a missing key: "… 'model.weights' does not exist."
            problems.append(
                f"{as_typed(o)}: {key} is null already, and Hydra cannot remove a null key; drop it"
            )
            continue
        if not o.is_delete():  # set to null, it is null for Hydra's delete as in the config
            nulled[key] = o.value() is None
        if o.is_add() or o.is_force_add():
            added_keys.add(key)
        passes = not plain_key or o.is_delete()
        if passes or key.startswith("hydra") or has_key(base, key):
            rewritten.append(as_typed(o))
            continue
        parent, _, name = key.rpartition(".")
        added = o.is_add() or o.is_force_add()
        if parent == "trainer" and name in trainer_arguments():
            rewritten.append(as_typed(o) if added else "+" + as_typed(o))
            continue
        if parent == "optimizer" and name in takes:
            rewritten.append(as_typed(o) if added else "+" + as_typed(o))  # as trainer.NAME
            continue
        if added and parent in ("trainer", "optimizer"):
            rewritten.append(as_typed(o))  # config.py checks that the class takes the argument
            continue
        node = OmegaConf.select(base, parent) if parent else base
        keys = ", ".join(str(k) for k in node) if isinstance(node, DictConfig) else ""
        having = options_with_key(parent, name) if parent in groups else []
        if parent == "optimizer" and not having:  # an argument of another option's class
            having = [option for option in group_options("optimizer")
                      if name in optimizer_class_arguments(
                          str(option_values("optimizer", option).get("_target_")))]  # fmt: skip
        if having:  # a key of another option of the group: not a misspelling
            problems.append(
                f"{key} is not a key of the chosen {parent} (got {as_typed(o)}; it has: {keys}); "
                f"{' and '.join(f'{parent}={h}' for h in having)} "
                f"{'has' if len(having) == 1 else 'have'} it: choose "
                f"{'that' if len(having) == 1 else 'one'} or drop {key}"
            )
            continue
        where = (
            f"{parent} has: {keys or 'no keys'}"
            if parent and has_key(base, parent)
            else f"top-level keys: {', '.join(str(k) for k in base)}"
        )
        if parent == "optimizer" and (more := takes - {*node, "fused"}):
            where += f" (and its class takes: {', '.join(sorted(more))})"
        if parent == "trainer":  # eval's trainer has no keys of its own: "no keys" misled
            close = difflib.get_close_matches(name, trainer_arguments(), n=3)
            trainer_takes = "lightning.Trainer takes any argument of its own" + (
                f": {', '.join(close)}?" if close else ""
            )
            where = f"{where} (and {trainer_takes})" if keys else trainer_takes
        problems.append(f"{key} is not a config key (got {as_typed(o)}); {where}; fix the spelling")
    return rewritten, problems


_composed: dict[tuple[str, tuple[str, ...], bool], DictConfig] = {}
COMPOSED_KEPT = 32  # a search composes a config a trial: keep the last few, not every one


def compose(config_name: str, overrides: list[str], with_hydra: bool = False) -> DictConfig:
    """The config `config_name` (train, eval, bench, search) of conf/ with `overrides`, composed by
    Hydra as a run would be (with its `hydra` node when `with_hydra`); nothing validated.

    A command's checks ask for the same config several times (~0.2 s a composition here), so
    each is composed once a process and handed out as a copy. Without the `hydra` node, the
    `hydra.*` overrides cannot change the result, and are left out of what it is filed under
    (the pipeline adds hydra.run.dir once it has claimed the directory)."""
    filed = overrides if with_hydra else [o for o in overrides if not _sets_hydra_key(o)]
    key = (config_name, tuple(filed), with_hydra)
    if key not in _composed:
        if len(_composed) >= COMPOSED_KEPT:
            del _composed[next(iter(_composed))]
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
                _composed[key] = hydra_compose(
                    config_name, overrides=overrides, return_hydra_config=with_hydra
                )
        except yaml.MarkedYAMLError as exc:  # a config file of conf/ that is not YAML
            raise HydraException(yaml_problem(exc)) from None
        finally:
            GlobalHydra.instance().clear()
    return copy.deepcopy(_composed[key])


def yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    """Where a config file breaks YAML's syntax and what is wrong there, in one line."""
    mark = exc.context_mark or exc.problem_mark  # where the broken construct starts
    where = (
        f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}" if mark else "a config file"
    )
    what = ": ".join(str(p) for p in (exc.context, exc.problem) if p)
    return f"{where} is not valid YAML ({what}); fix the file"


def _sets_hydra_key(line: str) -> bool:
    """`hydra.KEY=V` (or `+`/`++`): sets a key of the hydra node, and nothing outside it."""
    return line.lstrip("+").startswith("hydra.")


def one_line(exc: BaseException) -> str:
    """An exception's message in one line (its first two non-empty lines joined)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__


def unresolvable(
    node: DictConfig | ListConfig, prefix: str = "", removed: Iterable[str] = ()
) -> list[str]:
    """Every value whose ${...} reference does not resolve, one line each, in mappings and lists
    (optimizer.betas=[0.9,${oc.env:NOPE}] was a traceback); ??? is left to validation. `removed`:
    the keys the command line removes (~KEY), which a reference may name."""
    removed = tuple(removed)
    problems = []
    # keys(): iterating a DictConfig skips ??? values
    names: Iterable[Any] = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for name in names:
        key = f"{prefix}{name!s}" if isinstance(node, DictConfig) else prefix
        try:
            value = node[name]  # a key of a mapping, an index of a list
        except MissingMandatoryValue:
            continue
        except OmegaConfBaseException as exc:
            reason = str(exc).strip().splitlines()[0]
            missing = re.fullmatch(r"Interpolation key '([\w.]+)' not found", reason)
            gone = missing and next(
                (r for r in removed if missing[1] == r or missing[1].startswith(f"{r}.")), None
            )
            if missing and gone:
                # scheduler=cosine ~trainer: its ${trainer.max_steps} names a removed key (review)
                problems.append(
                    f"{key}: its ${{{missing[1]}}} names {missing[1]}, which ~{gone} removes; "
                    f"drop ~{gone} from the command line"
                )
            else:
                problems.append(f"{key}: {reason}; fix or remove the ${{...}} reference")
            continue
        if isinstance(value, DictConfig):
            problems += unresolvable(value, f"{key}.", removed)
        elif isinstance(value, ListConfig):
            problems += unresolvable(value, key, removed)  # an item's problem names the list's key
    return problems


def unparsable(overrides: list[str]) -> list[str]:
    """Each override Hydra's grammar refuses, with the quoting that makes a value one string."""
    parser, problems = OverridesParser.create(), []
    for line in overrides:
        try:
            parser.parse_override(line)
        except HydraException as exc:
            key, _, value = line.partition("=")
            hint = (
                f"; quote the value: {shell_word(override(key, value, interpolate=True))}"
                if not value.isascii() or any(c in value for c in " =,")  # a multirun job's folder
                else ""
            )
            if value.startswith("[") and value.endswith("]") and "=" in value:  # bench.knobs
                items = ",".join(f'"{item.strip()}"' for item in value[1:-1].split(","))
                hint = f"; quote each KEY=VALUE in the list: {shell_word(f'{key}=[{items}]')}"
            problem = f"cannot parse {line}: {one_line(exc)}{hint}"
            problems.append(problem.replace("\n", "\\n"))  # one line, even for a value with \n
    return problems


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
        hint = (
            hint
            or "; an override is KEY=VALUE (optimizer.lr=0.01), +KEY=VALUE to add a key, ~KEY to remove one"
        )
        problems.append(f"'{word}' is not KEY=VALUE{hint}")
    return problems

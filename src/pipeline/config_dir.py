"""Where the configs live and what groups they have: conf/ inside an installed wheel, else the
checkout's. Imports nothing heavy: the pre-flight, the wheel check and tests read it."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.layout import sweep_job_dirname


def find_config_dir() -> Path:
    """conf/ inside the installed package (a wheel), else the checkout's top-level conf/."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no conf/train.yaml beside {here} or in the checkout above it")


CONFIG_DIR = find_config_dir()
# conf/train.yaml's hydra.sweep.subdir: every entry point imports this module before Hydra runs.
OmegaConf.register_new_resolver("pipeline.job_dirname", sweep_job_dirname, replace=True)


def group_options(group: str) -> list[str]:
    """The options of a config group: its YAML files' names."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@functools.cache
def _option_file(group: str, option: str) -> dict[str, Any]:
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / group / f"{option}.yaml"))
    return {str(k): v for k, v in values.items()} if isinstance(values, dict) else {}


def option_values(group: str, option: str) -> dict[str, Any]:
    """The top-level keys and values of conf/<group>/<option>.yaml, unresolved (read once a
    process; a copy)."""
    return dict(_option_file(group, option))


SEARCH_GROUP = (
    "search"  # pipeline.search's spaces (conf/search.yaml): not a group of a run's config
)


def config_groups() -> list[str]:
    """The config groups of a run (train, eval): the folders of conf/ but search/."""
    return sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != SEARCH_GROUP)


def groups_help(*groups: str) -> str:
    """`--help`'s list of groups, a line each ("optimizer: adam, adamw, …"), and a blank line:
    `groups`, or every group of a run but Hydra's own (hydra/launcher); Hydra's
    $APP_CONFIG_GROUPS lists search/ too, which a run does not take."""
    shown = groups or [g for g in config_groups() if g != "hydra"]
    return "".join(f"{g}: {', '.join(group_options(g))}\n" for g in shown)


# --help's templates (conf/*.yaml hydra.help.template): ${pipeline.groups:} or ${pipeline.groups:a,b}
OmegaConf.register_new_resolver("pipeline.groups", groups_help, replace=True)

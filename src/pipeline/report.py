"""What the commands print: the resolved config as a tree, the run's shape, where it landed."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

console = Console()


def route_lightning_logs_to_hydra() -> None:
    """Lightning gives its loggers their own handler when imported first; send them to Hydra's
    handlers instead (the run's .log file, and the console at WARNING)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # torch.compile's C++ toolchain probe warns "No CUDA runtime is found" on every CPU-only run.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


@rank_zero_only
def show_config(cfg: DictConfig) -> None:
    """The resolved config, one branch per group."""
    tree = Tree("[bold]config[/]")
    for key, node in cfg.items():
        text = (
            OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else f"{node}\n"
        )
        tree.add(f"[bold cyan]{key!s}[/]").add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    console.print(tree)


@rank_zero_only
def show_line(text: str) -> None:
    console.print(text)


def show_error(program: str, message: str) -> None:
    """A run-ending error, on stderr, without a traceback."""
    print(f"{program}: {message}", file=sys.stderr)


@rank_zero_only
def show_run_dir(run_dir: Path) -> None:
    console.print(f"[bold]Run directory:[/] {run_dir}")
    console.print(f"[bold]TensorBoard:[/]   tensorboard --logdir {run_dir}")

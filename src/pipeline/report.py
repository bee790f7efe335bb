"""What the commands print: the resolved config as a tree, the run's shape, where it landed."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.syntax import Syntax
from rich.tree import Tree

from pipeline.overrides import shell_word

console = Console()


def silence_known_warnings() -> None:
    """Warnings Lightning gives on every run that ask nothing of the user (train and eval)."""
    # Lightning 2.6 calls a torch API that torch 2.14 deprecated, on every step.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # Lightning looks for state on the DataLoader; SyntheticDataModule keeps it (tested exact resume).
    warnings.filterwarnings(
        "ignore", message=r"You're resuming from a checkpoint that ended before the epoch ended"
    )
    # A resume= writes into its own checkpoints/ (a new run's directory is refused if it holds a
    # run); ckpt_path= from another run into a new one rightly keeps none of that run's step-file
    # list (a resume= of this run prunes only its own files): every resume said one of these.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from ")


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
    console.print(text, soft_wrap=True)  # one line, however long: not broken at 80 columns


def show_error(program: str, message: str) -> None:
    """A run-ending error, on stderr, without a traceback."""
    print(f"{program}: {message}", file=sys.stderr)


def log_to_file(message: str, *, with_traceback: bool = True) -> None:
    """`message` (and the traceback of the exception being handled) into the run's log files
    only: the console shows the one-line message the caller prints."""
    exc_info = sys.exc_info() if with_traceback else None
    record = logging.getLogger("pipeline").makeRecord(
        "pipeline", logging.ERROR, __file__, 0, message, (), exc_info
    )
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@rank_zero_only
def show_run_dir(run_dir: Path, *, tensorboard: bool) -> None:
    """The run directory and, where the run wrote TensorBoard's files, the command that opens it
    there, each on one line however long (soft_wrap: rich would break them at 80 columns where
    stdout is not a terminal, and a pasted path would be cut)."""
    console.print(f"[bold]Run directory:[/] {escape(str(run_dir))}", soft_wrap=True)
    if tensorboard:
        console.print(
            f"[bold]TensorBoard:[/]   tensorboard --logdir {escape(shell_word(str(run_dir)))}",
            soft_wrap=True,
        )

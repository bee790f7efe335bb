"""`python -m pipeline.eval ckpt_path=…`: the validation split on a checkpoint; prints and logs val/loss.

The run's config comes from the checkpoint; the command line's data.*, precision= and
trainer.* replace the saved values, device= and logger= are this command's own. The result is
validated by train's own rules (config.validate) before anything loads. Writes
outputs/eval/YYYY-MM-DD/HH-MM-SS/.
"""

from __future__ import annotations

# Before the imports below: a stop signal in the seconds torch and Lightning take is one line.
if __name__ == "__main__":  # python -m pipeline.eval
    from pipeline import stop_now as _stop_now
    from pipeline.launch_rank import refuse_unreadable_rank as _refuse

    _refuse("pipeline.eval")  # a rank Lightning's import would end on
    _stop_now.install("pipeline.eval")

import logging
import sys
import warnings
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from pipeline import build, cli, report, stop_now
from pipeline.checkpoints import own_config_problems, read_checkpoint, run_config_of
from pipeline.config import checkpoint_problems, validate
from pipeline.config_dir import CONFIG_DIR, config_groups
from pipeline.config_limits import limited_batches
from pipeline.errors import CONFIG_ERROR_EXIT_CODE, ConfigError
from pipeline.layout import LAST_CHECKPOINT, OUTPUTS
from pipeline.override_checks import has_key
from pipeline.overrides import shell_word
from pipeline.settings import required_keys, resolved

log = logging.getLogger(__name__)
report.silence_known_warnings()
# Eval restores the weights only: the training callbacks' state in the checkpoint is not needed.
warnings.filterwarnings("ignore", message=r"Be aware that when using `ckpt_path`, callbacks")
EVAL_GROUPS = (
    "data",
    "precision",
    "trainer",
    "device",
    "logger",
)  # what eval takes from its command line


def overridden_keys(overrides: list[str]) -> list[str]:
    """The keys (or groups) a command line sets, ckpt_path and Hydra's own aside."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:  # the pre-flight reports it
        return []
    keys = [o.key_or_group for o in parsed]
    return [k for k in keys if k != "ckpt_path" and not k.startswith("hydra")]


def run_config_for_eval(cfg: DictConfig, keys: list[str]) -> tuple[DictConfig, list[str]]:
    """The training config from the checkpoint with this command's overrides of `keys`, and a
    problem for each key eval does not take. Eval runs one process (devices=1)."""
    ckpt = read_checkpoint(cfg.ckpt_path, mmap=True)  # its config: no weights read
    run_cfg = OmegaConf.create(run_config_of(ckpt, cfg.ckpt_path))
    problems = []
    for key in keys:
        if key.split(".")[0] not in EVAL_GROUPS:
            problems.append(_from_the_checkpoint(key))
        elif key == "data.channels" and OmegaConf.select(cfg, key) != run_cfg.data.channels:
            problems.append(  # the model's stem takes the checkpoint's channels
                f"data.channels comes from the checkpoint (it was trained with data.channels="
                f"{run_cfg.data.channels}); drop data.channels={OmegaConf.select(cfg, key)} "
                "(for other channels, train a new run from its weights: model.weights=<ckpt>)"
            )
        elif key not in ("device", "logger") and not has_key(cfg, key):  # ~KEY: removed
            parent, _, name = key.rpartition(".")
            node = OmegaConf.select(run_cfg, parent) if parent else run_cfg
            if isinstance(node, DictConfig) and name in node:
                del node[name]  # as `~` left it in eval's config (it was set to null: review)
        elif key not in ("device", "logger"):
            OmegaConf.update(run_cfg, key, OmegaConf.select(cfg, key), merge=False)
    run_cfg.device = cfg.device
    run_cfg.logger = cfg.logger
    run_cfg.model.weights = None  # the checkpoint's state dict replaces them
    run_cfg.model.compile = False  # one pass over the validation split: compiling would not pay
    run_cfg.ckpt_path = None  # the run's own resume point, not what eval reads
    return run_cfg, problems


def one_process_note(device: DictConfig) -> str | None:
    """What of the device group eval leaves unused, since it runs one process on one device
    (device=ddp_cpu, device.devices=4, device.num_nodes=2); None when nothing is."""
    unused = [f"device.{key}={device.get(key, 1)}" for key in ("devices", "num_nodes")
              if device.get(key, 1) != 1]  # fmt: skip
    if not unused:
        return None
    return (
        f"pipeline.eval runs one process on one device: {' and '.join(unused)} "
        f"{'is' if len(unused) == 1 else 'are'} not used"
    )


def _from_the_checkpoint(key: str) -> str:
    """The line for a training key: what eval takes instead, and where that key does matter."""
    group = key.split(".")[0]
    where = (
        "a training setting: give it to pipeline.train, or to a resume: resume=<run dir>"
        if group in ("optimizer", "scheduler", "callbacks", "seed")
        else "to change the model, train a new run"
    )
    return (
        f"{key} comes from the checkpoint; pipeline.eval takes only data.*, precision=, "
        f"trainer.*, device= and logger= ({where})"
    )


def training_keys_problems(keys: list[str]) -> list[str]:
    """The keys of the training config that eval takes from the checkpoint (model.*, loss=,
    optimizer=, …), before Hydra composes eval's config, where they are no keys or groups at all
    (its message asked for `+optimizer=adam`, or called model.weights a misspelling)."""
    outside = [key for key in keys if key.split(".")[0] not in EVAL_GROUPS]
    training = set(cli.compose("train", [])) | set(config_groups()) if outside else set()
    problems = [_from_the_checkpoint(key) for key in outside if key.split(".")[0] in training]
    if "resume" in keys:  # train's: it would expand into the run's training overrides
        problems.append(
            f"resume= continues a training run; pipeline.eval takes a checkpoint: "
            f"ckpt_path={OUTPUTS}/<date>/<time>/{LAST_CHECKPOINT}"
        )
    return problems


def validate_eval(cfg: DictConfig, overrides: list[str]) -> list[str]:
    """Problems with an eval command: the checkpoint must be one of ours, and the run config it
    makes must pass train's validation."""
    path = OmegaConf.select(cfg, "ckpt_path", throw_on_missing=False)
    if path is None:
        return [f"ckpt_path is required; set ckpt_path={OUTPUTS}/<date>/<time>/{LAST_CHECKPOINT}"]
    problems = checkpoint_problems(str(path))
    if problems:
        return problems
    keys = overridden_keys(overrides)
    run_cfg, problems = run_config_for_eval(cfg, keys)
    # The keys this command gives (its device, what it overrides or removes) must be there;
    # the run's config may be older than a key.
    own = [k for k in required_keys() if k.startswith("device.") or any(
        k == key or k.startswith(f"{key}.") for key in keys)]  # fmt: skip
    problems += validate(run_cfg, training=False, required=own)
    if not problems:
        ckpt = read_checkpoint(str(path), mmap=True)  # the weights' shapes: no weights read
        problems += own_config_problems(ckpt, run_cfg, str(path))
    if "trainer.limit_val_batches" in keys and not problems:
        problems += scores_nothing_problems(run_cfg)
    return problems


def scores_nothing_problems(run_cfg: DictConfig) -> list[str]:
    """trainer.limit_val_batches that leaves none of the validation split's batches: Lightning
    validates nothing and returns no metrics."""
    limit = run_cfg.trainer.limit_val_batches
    samples, batch = run_cfg.data.num_val_samples, run_cfg.data.batch_size
    batches = -(-samples // batch)
    if limited_batches(batches, limit) >= 1:
        return []
    return [
        f"trainer.limit_val_batches={limit} leaves none of the validation split's {batches} "
        "batch(es): eval would score nothing; set trainer.limit_val_batches=1.0"
    ]


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base="1.3")
def evaluate(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    report.route_lightning_logs_to_hydra()
    try:
        keys = overridden_keys(list(HydraConfig.get().overrides.task))
        run_cfg, _ = run_config_for_eval(cfg, keys)
        if note := one_process_note(run_cfg.device):
            log.warning(note)
        pl.seed_everything(run_cfg.seed, verbose=False)
        datamodule = build.build_datamodule(run_cfg)
        module = build.build_module(run_cfg)
        trainer_args = resolved(run_cfg.trainer) if "trainer" in run_cfg else {}
        interrupted = SeesKeyboardInterrupt()
        precision = run_cfg.precision
        if precision == "16-mixed" and build.run_device(run_cfg).type == "cpu":
            # What Lightning does there, said in a line of ours (its own warning named its file)
            log.warning(
                "precision=16-mixed scores in bf16-mixed on a CPU: float16 autocast is CUDA's"
            )
            precision = "bf16-mixed"
        trainer = pl.Trainer(
            accelerator=run_cfg.device.accelerator,
            devices=1,
            precision=precision,
            logger=build.build_loggers(run_cfg, run_dir) or False,
            callbacks=[interrupted],
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
            **{k: v for k, v in trainer_args.items() if f"trainer.{k}" in keys},
        )
        try:
            (metrics,) = trainer.validate(
                module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True,
                verbose=False,
            )  # fmt: skip
        except SystemExit:  # Lightning's exit(1) after a Ctrl-C in its loop: no line of its own
            if interrupted.seen is not None:
                raise interrupted.seen from None  # main's one line, exit 128 + N
            raise
        stop_now.finished()  # scored: a Ctrl-C from here on changes nothing, the table prints
    except ConfigError as exc:
        cli.report_problems(exc.problems, "pipeline.eval")
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    # The path as a line of its own: a table's title wraps it at the table's width (uncopyable).
    report.console.print(f"Scored {shell_word(str(cfg.ckpt_path))}", markup=False, soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.6g}")
    report.console.print(table)
    report.show_run_dir(run_dir, tensorboard="tensorboard" in (cfg.logger or {}))


class SeesKeyboardInterrupt(pl.Callback):
    """The KeyboardInterrupt (or stop_now.Stopped) Lightning's loop ended on, which it turns
    into exit 1; None if none."""

    def __init__(self) -> None:
        self.seen: KeyboardInterrupt | None = None

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self.seen is None and isinstance(exception, KeyboardInterrupt):
            self.seen = exception


def main() -> None:
    """Console entry point `pipeline-eval` (through pipeline.entry_points)."""
    with stop_now.command("pipeline.eval", "nothing was scored"):
        overrides = list(cli.parse_command_line().overrides)
        problems = training_keys_problems(overridden_keys(overrides))
        if problems:
            cli.report_problems(problems, "pipeline.eval")
            sys.exit(CONFIG_ERROR_EXIT_CODE)
        cli.run(evaluate, "eval", "pipeline.eval", lambda cfg: validate_eval(cfg, overrides))


if __name__ == "__main__":
    main()

"""`python -m pipeline.eval ckpt_path=…`: the validation split on a checkpoint; prints and logs val/loss.

The run's model, data, loss and precision come from the config saved inside the checkpoint;
device= and logger= come from the command line. Writes outputs/eval/YYYY-MM-DD/HH-MM-SS/.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from pipeline import build, cli, report
from pipeline.checkpoints import read_checkpoint, run_config_of
from pipeline.config import CONFIG_DIR, checkpoint_problems
from pipeline.errors import CONFIG_ERROR_EXIT_CODE, ConfigError


def validate_eval(cfg: DictConfig) -> list[str]:
    """Problems with an eval config: the checkpoint must exist and be one of ours."""
    path = OmegaConf.select(cfg, "ckpt_path", throw_on_missing=False)
    if path is None:
        return ["ckpt_path is required; set ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt"]
    return checkpoint_problems(str(path))


def run_config_for_eval(cfg: DictConfig) -> DictConfig:
    """The training config from the checkpoint, with this command's device and logger (eval runs
    one process: the Trainer below takes devices=1 whatever the device group says)."""
    run_cfg = OmegaConf.create(run_config_of(read_checkpoint(cfg.ckpt_path), cfg.ckpt_path))
    run_cfg.device = cfg.device
    run_cfg.logger = cfg.logger
    run_cfg.model.weights = None  # the checkpoint's state dict replaces them
    run_cfg.model.compile = False  # one pass over the validation split: compiling would not pay
    return run_cfg


@hydra.main(config_path=str(CONFIG_DIR), config_name="eval", version_base="1.3")
def evaluate(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    report.route_lightning_logs_to_hydra()
    try:
        run_cfg = run_config_for_eval(cfg)
        pl.seed_everything(run_cfg.seed, verbose=False)
        datamodule = build.build_datamodule(run_cfg)
        module = build.build_module(run_cfg)
        trainer = pl.Trainer(
            accelerator=run_cfg.device.accelerator,
            devices=1,
            precision=run_cfg.precision,
            logger=build.build_loggers(run_cfg, run_dir) or False,
            enable_checkpointing=False,
            enable_model_summary=False,
            default_root_dir=run_dir,
        )
        (metrics,) = trainer.validate(
            module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True, verbose=False
        )
    except ConfigError as exc:
        cli.report_problems(exc.problems, "pipeline.eval")
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    table = Table(title=f"{cfg.ckpt_path}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.6g}")
    report.console.print(table)
    report.show_run_dir(run_dir)


def main() -> None:
    """Console entry point `pipeline-eval`."""
    cli.run(evaluate, "eval", "pipeline.eval", validate_eval)


if __name__ == "__main__":
    main()

"""The run's config in the loggers: in TensorBoard the `config` text and the Custom Scalars
layout at start, HParams with final metrics at end (on CUDA, the peak GPU memory too, also in
train.log); the same hyperparameters to every other logger at start (MLflow's params, the CSV
logger's hparams.yaml) and to TensorBoard's folder's hparams.yaml.

HParams lets a sweep's jobs be compared side by side in TensorBoard's HParams tab.
Rank 0 only (Lightning's loggers write nothing on other ranks).
"""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from pipeline.callbacks.gpu_memory import PEAK_TAG, gpu_memory_figures
from pipeline.loggers import PacedTensorBoardLogger
from pipeline.model import logged_metric

log = logging.getLogger(__name__)

CUSTOM_SCALARS = {  # TensorBoard's Custom Scalars tab: one chart per list of tag regexes
    "training": {
        "loss": ["Multiline", ["train/loss", "val/loss"]],
        "learning rate": ["Multiline", ["train/lr"]],
        "throughput": ["Multiline", ["perf/images_per_sec"]],
        "model TFLOP/s (training)": ["Multiline", ["perf/model_tflops_per_sec"]],
        "GPU memory (GB)": ["Multiline", [r"perf/gpu_mem_.*"]],
    },
    "gradients": {
        "gradient norm per block": ["Multiline", [r"grad_norm/.*"]],
        # The step the optimizer took, relative to the weights; ~1e-3 a step is the usual reading.
        "update ratio ‖Δw‖/‖w‖ per block": ["Multiline", [r"update_ratio/.*"]],
        # B_simple against the global batch: a batch far above B_simple buys little per sample.
        "noise scale B_simple and the global batch": ["Multiline", [r"grad_noise/.*"]],
        "analytic check, max relative error": ["Multiline", [r"gradcheck/fc_.*"]],
    },
}
FINAL_METRICS = {"train/loss": "hparams/train_loss", "val/loss": "hparams/val_loss"}


class RunSummary(pl.Callback):
    """Writes the resolved YAML as text tag `config`, the custom-scalars layout, and `hparams`
    (pipeline/hparams.py: the columns a user compares) as TensorBoard's hparams with final metrics
    hparams/train_loss and hparams/val_loss, and on CUDA hparams/gpu_mem_peak_gb (rank 0's peak
    GB held by tensors, also logged). Other loggers get `hparams` at fit start, so a run that
    stops early has them too. A few small writes a run."""

    def __init__(self, *, hparams: dict[str, Any], config_yaml: str) -> None:
        self.hparams = hparams
        self.config_yaml = config_yaml

    @staticmethod
    def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        tb = self._tensorboard(trainer)
        if tb is not None and trainer.is_global_zero:
            indented = "\n".join(
                "    " + line for line in self.config_yaml.splitlines()
            )  # markdown code
            tb.experiment.add_text("config", indented, global_step=0)
            tb.experiment.add_custom_scalars(CUSTOM_SCALARS)
            if isinstance(tb, PacedTensorBoardLogger):
                tb.write_hparams_file(self.hparams)  # the HParams tab's come at fit end
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.hparams)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        values = {final: logged_metric(trainer, tag) for tag, final in FINAL_METRICS.items()}
        metrics = {final: float(value) for final, value in values.items() if value is not None}
        if pl_module.device.type == "cuda":
            peak = gpu_memory_figures(torch.cuda.memory_stats(pl_module.device))[PEAK_TAG]
            metrics["hparams/gpu_mem_peak_gb"] = peak
            log.info("peak GPU memory held by tensors: %.2f GB", peak)
        tb = self._tensorboard(trainer)
        if tb is None:
            return
        tb.log_hyperparams(self.hparams, metrics=metrics)

"""Every shipped config composes and builds; every bad input gets its one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import get_class
from omegaconf import DictConfig

from pipeline import build
from pipeline.cli import compose
from pipeline.config import validate
from pipeline.config_dir import config_groups, group_options
from pipeline.loggers import MLFLOW_INSTALL, MLFLOW_MODULES, missing_modules

GPU_ONLY = {("device", "gpu"), ("device", "ddp")}


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in config_groups() for o in group_options(g)]
)
def test_every_option_composes_and_instantiates(
    group: str, option: str, tmp_path: Path, fake_hub_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(fake_hub_weights.parents[2]))
    monkeypatch.chdir(tmp_path)  # logger=mlflow opens its store under ./outputs at construction
    cfg = compose("train", [f"{group}={option}"])
    assert isinstance(cfg, DictConfig)
    problems = validate(cfg)
    if (group, option) in GPU_ONLY and not torch.cuda.is_available():
        assert any("needs a CUDA GPU" in p for p in problems)
        return
    if (group, option) == ("logger", "mlflow") and missing_modules(MLFLOW_MODULES):
        assert any(MLFLOW_INSTALL in p for p in problems)  # an optional extra not installed here
        return
    assert problems == []
    module = build.build_module(cfg)
    data = build.build_datamodule(cfg)
    trainer = build.build_trainer(cfg, tmp_path)
    optimizer = module.optimizer_factory(module.parameters())
    assert isinstance(optimizer, get_class(cfg.optimizer._target_))
    assert optimizer.defaults["lr"] == cfg.optimizer.lr
    assert len(data.train_dataloader().dataset) == cfg.data.num_samples
    assert trainer.max_steps == cfg.trainer.max_steps

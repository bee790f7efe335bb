"""Settings: the validated config as typed, frozen dataclasses, older runs' configs included."""

from __future__ import annotations

import dataclasses

import pytest
from omegaconf import OmegaConf

from pipeline.cli import compose
from pipeline.settings import OLDER_RUNS, RunSettings, settings_of


def test_the_default_config_as_settings() -> None:
    s = settings_of(compose("train", ["data.image_size=48", "optimizer=adamw"]))
    assert isinstance(s, RunSettings)
    assert (s.data.image_size, s.data.num_workers, s.loss, s.detect_nonfinite) == (
        48, "auto", "sum_diff", "raise"
    )  # fmt: skip
    assert s.optimizer["_target_"] == "torch.optim.AdamW"
    assert "detect_nonfinite" not in s.trainer  # the pipeline's own key, not Lightning's
    assert s.device.ddp is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.data.image_size = 64  # type: ignore[misc]


def test_ddp_settings_exist_for_ddp_only() -> None:
    s = settings_of(compose("train", ["device=ddp_cpu", "device.timeout_s=60"]))
    assert s.device.ddp is not None and s.device.ddp.timeout_s == 60
    assert s.device.ddp.static_graph is False


def test_a_config_saved_before_newer_keys_gets_what_those_runs_did() -> None:
    cfg = compose("train", [])
    OmegaConf.set_struct(cfg, False)
    for group, keys in OLDER_RUNS.items():
        for key in keys:
            del cfg[group][key]
    s = settings_of(cfg)
    assert (s.data.compile, s.model.compile, s.model.channels_last) == (False, False, False)
    assert (s.device.cudnn_benchmark, s.device.tf32, s.deterministic) == (False, None, False)

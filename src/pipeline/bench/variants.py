"""The Trainer variants the bench times against the pipeline, each a config.

`bare`: the Trainer without instruments or progress bar (with the run's loggers); the feature variants: bare plus
one instrument, at its configured frequency and at every step; the knob variants: the pipeline
with one of bench.knobs applied alone (read as Hydra reads a command-line override).
"""

from __future__ import annotations

from typing import Any

import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

# Skipped on a CPU: the flags do nothing there, and optimizer.fused is off there by default.
CUDA_ONLY_KNOBS = ("device.cudnn_benchmark", "device.tf32", "optimizer.fused")
BARE = {  # and the run's loggers without the graph: bare_config
    "callbacks": {
        "progress_bar": False,
        "gradients": {"enabled": False},
        "gradient_check": {"enabled": False},
    },
}


def merged(*configs: Any) -> DictConfig:
    """OmegaConf.merge of mappings, typed as the DictConfig it is."""
    out = OmegaConf.merge(*configs)
    assert isinstance(out, DictConfig)
    return out


def bare_config(cfg: DictConfig) -> DictConfig:
    """cfg without instruments or progress bar. It keeps the run's loggers (the instruments
    measure only for a logger: without one they return at once, and would look free), but not
    TensorBoard's graph, which is written once at the start."""
    out = merged(cfg, BARE)
    if "tensorboard" in out.logger:
        out.logger.tensorboard.log_graph = False
    return out


def feature_variants(cfg: DictConfig) -> dict[str, tuple[str, dict[str, Any]]]:
    """Bare plus one instrument, at its configured frequency or at every step: the key
    bench.features names it by → (its name in the figures, the change to bare)."""
    every = cfg.trainer.log_every_n_steps
    norms = {"enabled": True, "histogram_every_n_steps": 0, "noise_scale": "off"}
    return {
        "norms": (
            f"+norms and update ratios (every {every})",
            {"callbacks": {"gradients": norms}},
        ),
        "norms_every_step": (
            "+norms and update ratios (every step)",
            {"callbacks": {"gradients": norms}, "trainer": {"log_every_n_steps": 1}},
        ),
        "noise_scale": (
            f"+norms, noise scale=on (every {every})",
            {"callbacks": {"gradients": {**norms, "noise_scale": "on"}}},
        ),
        "histograms": (
            "+histograms (every step)",
            {
                "callbacks": {"gradients": {"enabled": True, "histogram_every_n_steps": 1}},
                "trainer": {"log_every_n_steps": 10**9},
            },
        ),
        "check": (
            "+analytic check (every step)",
            {"callbacks": {"gradient_check": {"enabled": True, "every_n_steps": 1}}},
        ),
        "progress_bar": ("+progress bar", {"callbacks": {"progress_bar": True}}),
    }


def chosen_features(cfg: DictConfig) -> list[str]:
    """The feature variants bench.features asks for: every one (true), none (false), or the
    keys listed."""
    features = cfg.bench.features
    if isinstance(features, bool):
        return list(feature_variants(cfg)) if features else []
    return list(features)


def instrument_frequencies(cfg: DictConfig) -> dict[str, int]:
    """How often the instruments timed at every step fire by default: what their cost is
    amortized over (`stats.amortized`)."""
    return {
        "norms": cfg.trainer.log_every_n_steps,
        "histograms": cfg.callbacks.gradients.histogram_every_n_steps,
        "check": cfg.callbacks.gradient_check.every_n_steps,
    }


def parse_knob(knob: str) -> tuple[str, Any]:
    """'model.channels_last=true' → ('model.channels_last', True): read as Hydra reads a
    command-line override (so trainer.detect_nonfinite=off is the string 'off', as in training)."""
    key, sep, _ = knob.partition("=")
    if not sep or not key.strip():
        raise ValueError(
            f"bench.knobs entry {knob!r} is not KEY=VALUE, e.g. model.channels_last=true"
        )
    try:
        override = OverridesParser.create().parse_override(knob.strip())
    except Exception as exc:  # Hydra's grammar error names the position
        raise ValueError(f"bench.knobs entry {knob!r}: {exc}") from None
    return override.key_or_group, override.value()


def with_knob(cfg: DictConfig, knob: str) -> DictConfig:
    """The config with one bench.knobs entry applied."""
    key, value = parse_knob(knob)
    out = merged(cfg)  # a deep copy
    OmegaConf.update(out, key, value, force_add=True)
    return out


def knob_configs(cfg: DictConfig, device: torch.device) -> tuple[dict[str, DictConfig], list[str]]:
    """The pipeline with each of bench.knobs applied alone; CUDA-only knobs are skipped on the CPU."""
    variants, skipped = {}, []
    for knob in cfg.bench.knobs:
        key, _ = parse_knob(knob)
        if key in CUDA_ONLY_KNOBS and device.type != "cuda":
            skipped.append(f"{knob} (CUDA only)")
            continue
        variants[f"pipeline {knob}"] = with_knob(cfg, knob)
    return variants, skipped

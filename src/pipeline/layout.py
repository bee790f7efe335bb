"""The run directory's names (a contract, DESIGN.md), in one place for every module that writes or
reads a run: build and the callbacks write them; the pre-flight (resume, rundir), replay, eval
and the bench read them. Imports nothing but pathlib, so the pre-flight stays light.

    outputs/YYYY-MM-DD/HH-MM-SS/
      .hydra/config.yaml, overrides.yaml
      tensorboard/events.out.tfevents.*
      checkpoints/last.ckpt             (the run's config inside, under CHECKPOINT_CONFIG_KEY)
      run.json, divergence.json, profile/
"""

from __future__ import annotations

from pathlib import Path

OUTPUTS = "outputs"  # where runs land (hydra.run.dir and hydra.sweep.dir in conf/train.yaml)
HYDRA_DIR = ".hydra"
SAVED_OVERRIDES = Path(HYDRA_DIR) / "overrides.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT_NAME = "last.ckpt"
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / LAST_CHECKPOINT_NAME  # relative to the run directory
CHECKPOINT_CONFIG_KEY = "pipeline_config"  # the run's resolved config inside every checkpoint
TENSORBOARD_DIR = "tensorboard"
CSV_DIR = "csv"
RUN_JSON = "run.json"
DIVERGENCE_FILE = "divergence.json"
PROFILE_DIR = "profile"
RUN_MARKERS = (HYDRA_DIR, CHECKPOINT_DIR)  # what a run directory holds once a run has started

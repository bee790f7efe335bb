"""The run directory's names (a contract, DESIGN.md), in one place for every module that writes or
reads a run: build and the callbacks write them; the pre-flight (resume, rundir), replay, eval
and the bench read them. Imports nothing but the standard library, so the pre-flight stays light.

    outputs/YYYY-MM-DD/HH-MM-SS/
      .hydra/config.yaml, overrides.yaml
      tensorboard/events.out.tfevents.*
      checkpoints/last.ckpt             (the run's config inside, under CHECKPOINT_CONFIG_KEY)
      run.json, divergence.json, profile/
"""

from __future__ import annotations

import hashlib
from pathlib import Path

OUTPUTS = "outputs"  # where runs land (hydra.run.dir and hydra.sweep.dir in conf/train.yaml)
SEARCH_TRIALS = "search"  # pipeline.search's trials: outputs/search/<study>/trial-NNNN/
BENCH_RUNS = "bench"  # pipeline.bench's folders (conf/bench.yaml): a soak's holds a last.ckpt
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
PROFILE_DIR = "profile"  # profiler=torch writes these three in it (pipeline.profiling)
TRACE_FILE = (
    "trace.pt.trace.json"  # Chrome/Perfetto JSON; TensorBoard's profiler plugin reads the suffix
)
TOP_OPS_FILE = "top_ops.txt"
MEMORY_SNAPSHOT_FILE = "memory_snapshot.pickle"  # CUDA: open in https://pytorch.org/memory_viz
RUN_MARKERS = (HYDRA_DIR, CHECKPOINT_DIR)  # what a run directory holds once a run has started

NAME_BYTES = 255  # the longest file name ext4, XFS, btrfs and tmpfs take, in bytes
NAME_HASH_CHARS = 12


def sweep_job_dirname(job_num: int | str, override_dirname: str) -> str:
    """A multirun job's directory name, `<n>_<its overrides>` (conf/train.yaml's
    hydra.sweep.subdir), made a file name that any disk takes: `/` in a value becomes `%2F`, and
    a name longer than NAME_BYTES keeps its first bytes and ends in `~` and a hash of the whole
    (Hydra's own name failed with 'File name too long' and a traceback). The full overrides
    are in the job's .hydra/overrides.yaml."""
    name = f"{job_num}_{override_dirname}".replace("/", "%2F")
    encoded = name.encode()
    if len(encoded) <= NAME_BYTES:
        return name
    digest = hashlib.sha1(encoded).hexdigest()[:NAME_HASH_CHARS]
    head = encoded[: NAME_BYTES - NAME_HASH_CHARS - 1].decode(errors="ignore")
    return f"{head}~{digest}"

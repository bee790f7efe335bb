"""Several loggers at once, MLflow as an optional extra, and the HParams table's columns: what each
logger stored, read back with its own reader."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import TINY, run_cli, scalars
from pipeline.loggers import MLFLOW_INSTALL, MLFLOW_MODULES, mark_stopped, missing_modules

HAS_MLFLOW = not missing_modules(MLFLOW_MODULES)
NEEDS_MLFLOW = pytest.mark.skipif(
    not HAS_MLFLOW, reason=f"MLflow is not installed here: {MLFLOW_INSTALL} (make test installs it)"
)
LOGGERS = "logger=[tensorboard,csv,mlflow]" if HAS_MLFLOW else "logger=[tensorboard,csv]"
MOMENTA = (0.0, 0.9)  # the sweep's values of optimizer.momentum, one job each
# What every job's table holds besides the swept key: the compared keys, then what TINY set.
# callbacks.progress_bar and the logger list were set too, and are not hyperparameters.
TABLE = {
    "optimizer": "sgd",
    "loss": "sum_diff",
    "scheduler": "none",
    "optimizer.lr": 0.001,
    "optimizer.weight_decay": 0.0,
    "data.batch_size": 4,
    "data.image_size": 32,
    "precision": "32-true",
    "seed": 42,
    "data.num_samples": 8,
    "data.num_val_samples": 4,
    "trainer.max_steps": 2,
    "trainer.log_every_n_steps": 1,
}


def _table(momentum: float) -> dict[str, Any]:
    return {**TABLE, "optimizer.momentum": momentum}


# ---- the HParams table: one pure function -------------------------------------------------------


# ---- choosing loggers ---------------------------------------------------------------------------


# ---- one sweep of two jobs, every logger at once, read back ------------------------------------


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`optimizer.momentum=0.0,0.9 -m` with every logger: one process, two runs, one MLflow
    store. `-m` among the overrides, where Hydra's own parser refused the ones after it."""
    root = tmp_path_factory.mktemp("loggers")
    home = root / "torch_home"
    home.mkdir()
    momenta = ",".join(str(m) for m in MOMENTA)
    result = run_cli("pipeline.train", [f"optimizer.momentum={momenta}", "-m", LOGGERS, *TINY],
                     root, home)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return root


def _jobs(root: Path) -> list[Path]:
    jobs = sorted(p for p in (root / "outputs" / "multirun").glob("*/*/*") if p.is_dir())
    assert len(jobs) == len(MOMENTA), jobs
    return jobs


def _csv_column(job: Path, column: str) -> list[tuple[int, float]]:
    with open(job / "csv" / "metrics.csv", newline="") as f:
        return [(int(row["step"]), float(row[column])) for row in csv.DictReader(f) if row[column]]


def _csv_header(job: Path) -> list[str]:
    with open(job / "csv" / "metrics.csv", newline="") as f:
        return next(csv.reader(f))


@pytest.mark.e2e
def test_csv_and_tensorboard_hold_the_same_losses_and_tensorboard_keeps_its_tags(
    sweep: Path,
) -> None:
    for job in _jobs(sweep):
        tags = scalars(job / "tensorboard")
        assert {"train/loss", "val/loss", "train/lr", "perf/images_per_sec", "grad_norm/total",
                "update_ratio/total", "hparams/val_loss"} <= set(tags)  # fmt: skip
        assert not list((job / "tensorboard").glob("version_*"))
        for tag in ("train/loss", "val/loss", "grad_norm/total"):
            from_csv = _csv_column(job, tag)
            assert [s for s, _ in from_csv] == [s for s, _ in tags[tag]], tag
            assert [v for _, v in from_csv] == pytest.approx([v for _, v in tags[tag]]), tag
        assert [s for s, _ in tags["train/loss"]] == [0, 1]  # TINY: 2 steps, logged every step
        # Lightning writes the epoch beside its step logs: train/loss's steps, and validation's
        assert [s for s, _ in tags["epoch"]][:2] == [0, 1] and "epoch" in _csv_header(job)
        with open(job / "csv" / "metrics.csv", newline="") as f:
            counts = [row["grad/nonfinite_count"] for row in csv.DictReader(f)]
        assert "0" in counts and "0.0" not in counts  # an int stays an int


@pytest.mark.e2e
def test_csv_hparams_and_tensorboard_hparams_tab_hold_the_compared_table(sweep: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    for job, momentum in zip(_jobs(sweep), MOMENTA, strict=True):
        assert yaml.safe_load((job / "csv" / "hparams.yaml").read_text()) == _table(momentum)
        # TensorBoard's folder has them too (Lightning wrote `{}` there at the first save)
        assert yaml.safe_load((job / "tensorboard" / "hparams.yaml").read_text()) == _table(
            momentum
        )
        acc = EventAccumulator(str(job / "tensorboard"))
        acc.Reload()
        content = acc.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/session_start_info"]
        ).session_start_info
        shown = {k: getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
        assert shown == pytest.approx(_table(momentum))  # TensorBoard stores numbers as floats
        experiment = plugin_data_pb2.HParamsPluginData.FromString(
            content["_hparams_/experiment"]
        ).experiment
        assert {m.name.tag for m in experiment.metric_infos} == {
            "hparams/train_loss",
            "hparams/val_loss",
        }


@pytest.mark.e2e
@NEEDS_MLFLOW
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # mlflow's store on SQLAlchemy 2.1
def test_mlflow_store_holds_each_job_as_a_run_with_params_metrics_and_its_directory(
    sweep: Path,
) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipeline")
    assert experiment is not None
    assert experiment.artifact_location == str((sweep / "outputs" / "mlflow-artifacts").resolve())
    runs = {r.data.tags["run_dir"]: r for r in client.search_runs([experiment.experiment_id])}
    jobs = _jobs(sweep)
    assert set(runs) == {str(job) for job in jobs}
    for job, momentum in zip(jobs, MOMENTA, strict=True):
        run = runs[str(job)]
        assert run.info.status == "FINISHED"
        assert run.info.run_name == str(job.relative_to(sweep))
        assert run.data.params == {k: str(v) for k, v in _table(momentum).items()}
        for tag in ("train/loss", "val/loss", "grad_norm/total"):
            history = sorted(
                (m.step, m.value) for m in client.get_metric_history(run.info.run_id, tag)
            )
            from_csv = _csv_column(job, tag)
            assert [s for s, _ in history] == [s for s, _ in from_csv], tag
            assert [v for _, v in history] == pytest.approx([v for _, v in from_csv]), tag
    # A run a signal stopped: KILLED, not FINISHED (Lightning ends a stopped fit as a completed
    # one, and MLflow's UI showed the stopped run as complete): what train.py calls then.
    from lightning.pytorch.loggers import MLFlowLogger

    stopped = runs[str(jobs[-1])].info.run_id
    mark_stopped([MLFlowLogger(tracking_uri=client.tracking_uri, run_id=stopped)])
    assert client.get_run(stopped).info.status == "KILLED"

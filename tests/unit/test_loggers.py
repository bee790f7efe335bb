"""Several loggers at once, MLflow as an optional extra, and the HParams table's columns: what each
logger stored, read back with its own reader."""

from __future__ import annotations

import contextlib
import importlib.util
import sqlite3
import sys
from pathlib import Path

import pytest
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from helpers import TINY, scalars
from pipeline import build
from pipeline.cli import compose, preflight
from pipeline.config import validate
from pipeline.hparams import compared_hparams
from pipeline.loggers import PacedTensorBoardLogger, StepRowsCSVLogger, mlflow_store_problems
from pipeline.settings import resolved

# What every job's table holds besides the swept key: the compared keys, then what TINY set.
# callbacks.progress_bar and the logger list were set too, and are not hyperparameters.


# ---- the HParams table: one pure function -------------------------------------------------------


def test_the_table_holds_the_compared_keys_and_what_the_command_line_set() -> None:
    overrides = ["optimizer=adamw", "optimizer.lr=3e-4", "device=cpu", "trainer.max_steps=5",
                 "callbacks.progress_bar=false", "callbacks.gradients.histogram_every_n_steps=0",
                 "logger=[tensorboard,csv]", "profiler=simple", "+trainer.gradient_clip_val=1.0"]  # fmt: skip
    config = resolved(compose("train", overrides))
    overrides.append("~trainer.deterministic")  # a removed key is no column
    assert compared_hparams(config, overrides) == {
        "optimizer": "adamw",  # torch.optim.AdamW, named as the option is
        "loss": "sum_diff",
        "scheduler": "none",
        "optimizer.lr": 3e-4,
        "optimizer.weight_decay": 0.01,  # adamw's default, from its YAML
        "data.batch_size": 32,
        "data.image_size": 64,
        "precision": "32-true",
        "seed": 42,
        "device": "cpu",  # a group the command line chose: the option's name
        "trainer.max_steps": 5,
        "trainer.gradient_clip_val": 1.0,
    }


def test_the_table_holds_scalars_only() -> None:
    config = {"optimizer": {"_target_": "torch.optim.Adam", "lr": 0.1, "betas": [0.9, 0.99]},
              "loss": {"name": "mse"}, "scheduler": {"name": "cosine"}, "seed": 1,
              "precision": "bf16-mixed", "model": {"weights": None}}  # fmt: skip
    table = compared_hparams(config, ["optimizer.betas=[0.9,0.99]", "model.weights=null"])
    assert table["optimizer.betas"] == "[0.9, 0.99]" and table["model.weights"] == "None"
    assert "data.batch_size" not in table  # absent from the config: no column rather than a guess
    assert all(isinstance(v, bool | int | float | str) for v in table.values())


# ---- choosing loggers ---------------------------------------------------------------------------


def test_the_default_is_tensorboard_alone_and_a_list_composes_several(tmp_path: Path) -> None:
    assert set(compose("train", []).logger) == {"tensorboard"}
    assert set(compose("train", ["logger=none"]).logger) == set()
    both = compose("train", ["logger=[tensorboard,csv]", "logger.tensorboard.log_graph=true"])
    assert preflight("train", ["logger=[tensorboard,csv]"], False, validate)[1] == []
    built = build.build_loggers(both, tmp_path)
    assert [type(lg) for lg in built] == [PacedTensorBoardLogger, StepRowsCSVLogger]
    assert both.logger.tensorboard.log_graph is True
    assert build.build_loggers(compose("train", ["logger=none"]), tmp_path) == []


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        (
            "logger=[tensorboard,wandb]",
            "logger=wandb is not an option of logger; choose one of: csv, mlflow, none, tensorboard",
        ),
        (
            "logger=[]",
            "logger=[] chooses no option; choose one or more of: csv, mlflow, none, tensorboard",
        ),
    ],
)
def test_a_list_with_an_unknown_logger_or_none_gets_its_line(override: str, problem: str) -> None:
    assert preflight("train", [override], False, validate)[1] == [problem]


def test_a_sweep_may_alternate_lists_of_loggers() -> None:
    assert preflight("train", ["logger=[tensorboard,csv],none"], True, validate)[1] == []


def test_mlflow_asked_for_but_not_installed_exits_2_with_the_pip_command_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process, through the command line's own entry point, with mlflow hidden."""
    from pipeline import train

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlflow" else real_find_spec(name, *a),
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline-train", "logger=[tensorboard,mlflow]", *TINY])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "pipeline.train: 1 config problem:",
        "  - logger=mlflow needs MLflow, which is not installed here (no module mlflow); "
        "install it with: pip install -e '.[mlflow]'",
    ]
    assert not (tmp_path / "outputs").exists()  # nothing started


# ---- one sweep of two jobs, every logger at once, read back ------------------------------------


def test_log_scalars_writes_one_tensorboard_event_a_step_and_the_csv_rows(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from pipeline.loggers import log_scalars

    tensorboard = TensorBoardLogger(tmp_path / "tb", name="", version="")
    csv = CSVLogger(tmp_path / "csv", name="", version="")
    metrics = {"grad_norm/fc": 0.25, "update_ratio/fc": 1e-3, "grad/nonfinite_count": 0}
    for step in (0, 3):
        log_scalars([tensorboard, csv], {k: v * (step + 1) for k, v in metrics.items()}, step)
    tensorboard.experiment.flush()
    csv.save()
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert set(events.Tags()["scalars"]) == set(metrics)
    for tag, value in metrics.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert got == [(0, pytest.approx(value, rel=1e-7)), (3, pytest.approx(4 * value, rel=1e-7))]
    (path,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    summaries = [e for e in EventFileLoader(str(path)).Load() if e.HasField("summary")]
    assert [len(e.summary.value) for e in summaries] == [3, 3]  # one event a step
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].split(",")[0] == "grad/nonfinite_count"


def test_the_csv_logger_writes_one_row_a_step_however_many_calls_log_it(tmp_path: Path) -> None:
    import csv

    def on_disk() -> list[dict[str, str]]:
        with open(tmp_path / "metrics.csv", newline="") as f:
            return [{k: v for k, v in row.items() if v} for row in csv.DictReader(f)]

    logger = StepRowsCSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"train/lr": 0.1}, step=0)
    logger.log_metrics({"perf/images_per_sec": 50.0}, step=0)
    logger.log_metrics({"train/loss": 2.5, "epoch": 0}, step=0)
    logger.save()  # as Lightning does after each of its calls: the newest row may get more
    assert not (tmp_path / "metrics.csv").exists()
    logger.log_metrics({"val/loss": 3.0, "epoch": 0}, step=0)  # validation's, after the step's
    logger.log_metrics({"train/lr": 0.1}, step=1)  # step 0 is finished: on disk
    assert len(on_disk()) == 1 and len(logger.experiment.metrics) == 1
    logger.log_metrics({"train/loss": 2.0}, step=1)
    logger.log_metrics({"train/lr": 0.05}, step=2)
    logger.log_metrics({"train/lr": 0.01}, step=2)  # a value again: a row of its own
    logger.finalize("success")
    assert on_disk() == [
        {"step": "0", "train/lr": "0.1", "perf/images_per_sec": "50.0", "train/loss": "2.5",
         "epoch": "0", "val/loss": "3.0"},
        {"step": "1", "train/lr": "0.1", "train/loss": "2.0"},
        {"step": "2", "train/lr": "0.05"},
        {"step": "2", "train/lr": "0.01"},
    ]  # fmt: skip


def test_tensorboard_is_flushed_on_a_pace_and_its_events_reach_the_disk_unasked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning saves the loggers on every logging step, and a save flushed the event file,
    waiting for its writer thread: the pipeline's flushes at most every TENSORBOARD_FLUSH_S, and
    the writer thread flushes on its own that often, so nothing logged waits longer."""
    import time
    from types import SimpleNamespace

    from pipeline import loggers

    now = [1000.0]
    monkeypatch.setattr(loggers, "time", SimpleNamespace(monotonic=lambda: now[0]))  # its clock
    logger = PacedTensorBoardLogger(save_dir=tmp_path, name="tb", version="")
    flushes: list[float] = []
    flush = logger.experiment.flush
    monkeypatch.setattr(logger.experiment, "flush", lambda: (flushes.append(now[0]), flush()))
    for step in range(6):  # saves at 1000, 1001, …, 1005: the first, then one a pace
        logger.log_metrics({"train/loss": float(step)}, step=step)
        logger.save()
        now[0] += 1.0
    assert flushes == [1000.0, 1002.0, 1004.0]
    writer = logger.experiment._get_file_writer().event_writer._async_writer
    assert writer.flush_secs == loggers.TENSORBOARD_FLUSH_S

    logger.log_metrics({"train/loss": 6.0}, step=6)  # no save: the writer thread flushes it
    deadline = time.monotonic() + 10 * loggers.TENSORBOARD_FLUSH_S
    while scalars(tmp_path / "tb").get("train/loss", [])[-1:] != [(6, 6.0)]:
        assert time.monotonic() < deadline, "the event never reached the disk"
        time.sleep(0.1)
    assert not (tmp_path / "tb" / "hparams.yaml").exists()  # no hyperparameters, no `{}` file
    logger.log_hyperparams({"optimizer.lr": 0.01}, metrics={"hparams/val_loss": 0.5})
    assert yaml.safe_load((tmp_path / "tb" / "hparams.yaml").read_text()) == {"optimizer.lr": 0.01}
    logger.finalize("success")  # flushes, closes and saves, whatever the pace
    assert flushes[-1] == now[0]


def test_a_histogram_steps_burst_of_events_does_not_wait_for_the_writer_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard's writer thread writes the events a training step queues; with torch's queue
    of 10, a histogram step (two events a parameter) waited for it. The pipeline's writer keeps
    them in a list: a burst of loggers.TENSORBOARD_QUEUE goes in while the writer is held up."""
    import threading

    from tensorboard.summary.writer.record_writer import RecordWriter

    from pipeline import loggers

    logger = PacedTensorBoardLogger(save_dir=tmp_path, name="tb", version="")
    logger.experiment  # noqa: B018  # the event file and its header, written and flushed
    gate = threading.Event()  # from here the writer thread writes nothing until it is set
    write = RecordWriter.write
    monkeypatch.setattr(RecordWriter, "write", lambda self, data: (gate.wait(), write(self, data)))
    queued = threading.Event()
    burst_size = loggers.TENSORBOARD_QUEUE  # the writer thread holds one, the queue the rest

    def burst() -> None:
        for step in range(burst_size):
            logger.log_metrics({"grad_norm/total": float(step)}, step=step)
        queued.set()

    threading.Thread(target=burst, daemon=True).start()
    try:
        assert queued.wait(timeout=60), "a write waited for the writer thread"
    finally:
        gate.set()  # also when it failed: the burst and the writer thread finish
    logger.finalize("success")
    logged = scalars(tmp_path / "tb")["grad_norm/total"]
    assert logged == [(s, float(s)) for s in range(burst_size)]


def test_an_mlflow_store_mlflow_cannot_open_is_one_line_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each was a ~260-line traceback once the run had started, its run directory left
    half-made and then refused as holding a run (hostile review)."""
    a_file = tmp_path / "afile"
    a_file.write_text("not a folder")
    junk = tmp_path / "junk.db"
    junk.write_text("not a database")
    refused = {
        str(tmp_path / "store"): "MLflow 3 takes no folder as its store",
        f"sqlite:///{tmp_path}": "is a folder; name a file in it",
        f"sqlite:///{a_file}/sub/mlflow.db": "the database cannot be created in",
        f"sqlite:///{junk}": "is not a SQLite database MLflow can open",
    }
    for uri, why in refused.items():
        [problem] = mlflow_store_problems(uri)
        assert problem.startswith(f"logger.mlflow.tracking_uri={uri}: ") and why in problem
    other = tmp_path / "other.db"  # another tool's (an Optuna study's, say)
    with contextlib.closing(sqlite3.connect(other)) as db:
        db.execute("CREATE TABLE studies (id INTEGER)")
    [problem] = mlflow_store_problems(f"sqlite:///{other}")
    assert "is another tool's database (it has no MLflow tables)" in problem
    ours = tmp_path / "ours.db"
    with contextlib.closing(sqlite3.connect(ours)) as db:
        db.execute("CREATE TABLE experiments (id INTEGER)")
    accepted = (f"sqlite:///{tmp_path}/new/mlflow.db", f"sqlite:///{ours}", "sqlite://",
                "http://127.0.0.1:9")  # fmt: skip
    for uri in accepted:
        assert mlflow_store_problems(uri) == [], uri
    assert not (tmp_path / "new").exists()  # looked at, nothing made
    # SQLAlchemy's dialect names are lower case (SQLITE:/// passed, then failed the run)
    assert mlflow_store_problems(f"SQLITE:///{ours}") == [
        f"logger.mlflow.tracking_uri=SQLITE:///{ours}: write its scheme in lower case: "
        f"sqlite:///{ours}"
    ]
    assert "takes three slashes" in mlflow_store_problems("sqlite://rel.db")[0]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow's own opt-in: a folder
    assert mlflow_store_problems(str(tmp_path / "store")) == []
    assert mlflow_store_problems(f"sqlite:///{junk}") != []  # its SQLite files still checked

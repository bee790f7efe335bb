"""The run's loggers, one per key of the `logger` group: `logger=[tensorboard,csv,mlflow]`.

Each option of conf/logger/ holds its settings under its own name, so Hydra's list of group
options composes them side by side: cfg.logger == {"tensorboard": {...}, "csv": {}}.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import logging
import os
import sqlite3
import tempfile
import time
from argparse import Namespace
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.loggers import TensorBoardLogger as FabricTensorBoardLogger
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from torch import Tensor

from pipeline import step_scalars
from pipeline.errors import ResourceError
from pipeline.layout import CSV_DIR, TENSORBOARD_DIR
from pipeline.logging_steps import writes_step_logs
from pipeline.tensorboard_events import cannot_write_events, pace_writes, use_fast_crc

# logger=mlflow needs these importable; the mlflow extra installs them (mlflow-skinny leaves
# out the SQL store's own dependencies).
MLFLOW_MODULES = ("mlflow", "sqlalchemy", "alembic")
MLFLOW_INSTALL = "pip install -e '.[mlflow]'"
SQLITE_PREFIX = "sqlite:///"
# How stale the event file on disk may be while a run logs (a live TensorBoard's view of it).
TENSORBOARD_FLUSH_S = 2.0
# Events waiting that wake the writer thread before its pace (a histogram step writes 2 a
# parameter: 124 for ResNet18). Each is small (a logging step's scalars, one histogram).
TENSORBOARD_QUEUE = 1024


def missing_modules(modules: tuple[str, ...]) -> list[str]:
    """The modules of `modules` that cannot be imported here (looked up, not imported)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def logger_problems(loggers: Mapping[str, Any], missing: list[str]) -> list[str]:
    """Why the chosen loggers cannot run: MLflow asked for and `missing` some of its modules, or
    a tracking_uri it cannot open (mlflow_store_problems)."""
    if "mlflow" not in loggers:
        return []
    if missing:
        return [
            f"logger=mlflow needs MLflow, which is not installed here (no module {', '.join(missing)}); "
            f"install it with: {MLFLOW_INSTALL}"
        ]
    store = loggers["mlflow"]
    if "tracking_uri" not in store:  # ~logger.mlflow.tracking_uri: config.validate's line
        return []
    if store["tracking_uri"] is None:  # MLflow's default would be a folder, which MLflow 3 refuses
        return [f"logger.mlflow.tracking_uri is null; name a SQLite file: "
                f"logger.mlflow.tracking_uri={SQLITE_PREFIX}outputs/mlflow.db"]  # fmt: skip
    return mlflow_store_problems(str(store["tracking_uri"]))


REMOTE_STORES = ("http://", "https://", "databricks", "postgresql", "mysql", "mssql")


def mlflow_store_problems(uri: str) -> list[str]:
    """A tracking_uri MLflow cannot open, found before the run: a SQLite file in a folder that
    cannot be written, or a file that is not a database; a folder (MLflow's file store, which
    MLflow 3 refuses: 'in maintenance mode'). Each was a traceback of ~260 lines once the run
    had started, its run directory left half-made. A server's address is MLflow's to reach."""
    scheme, sep, rest = uri.partition("://")
    key = f"logger.mlflow.tracking_uri={uri}"
    if sep and scheme != scheme.lower():  # SQLAlchemy's dialect names are lower case
        return [f"{key}: write its scheme in lower case: {scheme.lower()}://{rest}"]
    if uri.startswith(REMOTE_STORES) or (scheme == "sqlite" and rest in ("", "/")):
        return []  # a server's, or SQLite in memory
    if scheme == "sqlite" and not rest.startswith("/"):
        return [f"{key}: a SQLite file takes three slashes: {SQLITE_PREFIX}{rest}"]
    if not uri.startswith(SQLITE_PREFIX):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return []  # MLflow's own opt-in to its file store: its rules there, not ours
        return [
            f"{key}: MLflow 3 takes no folder as its store (its file store is in maintenance "
            f"mode); use a SQLite file: logger.mlflow.tracking_uri={SQLITE_PREFIX}outputs/mlflow.db"
        ]
    path = Path(uri.removeprefix(SQLITE_PREFIX))
    if path.is_dir():
        return [
            f"{key}: {path} is a folder; name a file in it: {SQLITE_PREFIX}{path / 'mlflow.db'}"
        ]
    if path.exists():
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        except sqlite3.Error as exc:
            return [f"{key}: {path} is not a SQLite database MLflow can open ({exc})"]
        if tables and "experiments" not in tables:  # MLflow would add its tables beside them
            return [f"{key}: {path} is another tool's database (it has no MLflow tables); "
                    f"name a new file, e.g. {SQLITE_PREFIX}outputs/mlflow.db"]  # fmt: skip
        return []
    folder = next(p for p in path.absolute().parents if p.exists())
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        why = exc.strerror or str(exc)
        return [
            f"{key}: the database cannot be created in {folder} ({why}); choose a writable folder"
        ]
    return []


def build_loggers(loggers: Mapping[str, Any], run_dir: Path) -> list[Logger]:
    """One Lightning logger per chosen option; empty for logger=none."""
    built: list[Logger] = []
    if "tensorboard" in loggers:
        built.append(
            PacedTensorBoardLogger(
                save_dir=run_dir,
                name=TENSORBOARD_DIR,
                version="",
                default_hp_metric=False,
                log_graph=loggers["tensorboard"]["log_graph"],
            )
        )
    if "csv" in loggers:
        built.append(StepRowsCSVLogger(save_dir=run_dir, name=CSV_DIR, version=""))
    if "mlflow" in loggers:
        built.append(mlflow_logger(**loggers["mlflow"], run_dir=run_dir))
    return built


class PacedTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, whose events cost the training loop less
    (pipeline/tensorboard_events.py): their records' checksums come from C, not TensorBoard's
    pure Python, and they wait in a list for a writer thread that wakes every
    TENSORBOARD_FLUSH_S (or once TENSORBOARD_QUEUE wait), where TensorBoard's woke for each,
    taking the GIL from the loop; the event file on disk is at most that stale. Its save()
    flushes at most every TENSORBOARD_FLUSH_S: Lightning saves the loggers after each of its
    log calls, on every logging step. The end of a run, however it ends, writes, flushes and
    closes as before. An event file that cannot be written is a ResourceError (exit 6)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(flush_secs=TENSORBOARD_FLUSH_S, max_queue=TENSORBOARD_QUEUE, **kwargs)
        self._next_save = 0.0  # time.monotonic() from which save() saves again

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """Lightning's SummaryWriter, its events paced (made on first use, on rank 0)."""
        if self._experiment is None:
            use_fast_crc()  # here, not in __init__: a DDP process gets the logger pickled
            try:  # a file made and removed first: TensorBoard's thread would die loudly on it
                Path(self.log_dir).mkdir(parents=True, exist_ok=True)
                tempfile.TemporaryFile(dir=self.log_dir).close()
                writer = super().experiment  # creates the event file
            except OSError as error:  # a read-only or full disk
                raise cannot_write_events(self.log_dir, error) from None
            pace_writes(writer, flush_secs=TENSORBOARD_FLUSH_S, wake_at=TENSORBOARD_QUEUE)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Lightning's, but an event file that cannot be written stays a ResourceError (exit 6):
        Lightning's wraps any failure of add_scalar in a ValueError ("you tried to log 0.36
        which is currently not supported")."""
        try:
            super().log_metrics(metrics, step)
        except ValueError as error:
            if isinstance(error.__cause__, ResourceError):
                raise error.__cause__ from None
            raise

    @rank_zero_only
    def save(self) -> None:
        """Fabric's save, the flush. Not Lightning's, which also writes hparams.yaml if it is
        missing, with the hyperparameters logged so far: `{}` in every run, whose come at its
        end (callbacks/run_summary.py); write_hparams_file writes the file."""
        now = time.monotonic()
        if now >= self._next_save:
            self._next_save = now + TENSORBOARD_FLUSH_S
            FabricTensorBoardLogger.save(self)

    @rank_zero_only
    def log_hyperparams(
        self, params: dict[str, Any] | Namespace, metrics: dict[str, Any] | None = None,
        step: int | None = None,
    ) -> None:  # fmt: skip
        super().log_hyperparams(params, metrics, step)
        self.write_hparams_file(self.hparams)

    @rank_zero_only
    def write_hparams_file(self, params: dict[str, Any] | Namespace) -> None:
        """hparams.yaml beside the event files, without TensorBoard's HParams (that wants the
        final metrics: RunSummary logs it at fit end); at fit start, so a run that fails has it."""
        self.experiment  # noqa: B018  # creates the folder
        save_hparams_to_yaml(Path(self.log_dir) / self.NAME_HPARAMS_FILE, params)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._next_save = 0.0  # Lightning's finalize saves after closing: not paced away
        super().finalize(status)


class StepRowsCSVLogger(CSVLogger):
    """Lightning's CSV logger with one row a step: a step's metrics logged in several calls (its
    self.log values, the instruments' scalars, validation's val/loss after them) share one row of
    metrics.csv, where Lightning's starts a row a call, leaving gaps in every column. A step's
    row goes to disk when the next step's first metrics arrive, and at the end (Lightning's
    saves after each of its own calls write the finished rows only).

    A resumed run keeps the rows already written: Lightning deletes metrics.csv when its writer
    starts, so they are read first and written back before anything else is saved. (A run
    killed after its last checkpoint may have rows for steps its resume logs again, as its
    TensorBoard curves do.)"""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._carried = _read_rows(Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE)

    @rank_zero_only
    def log_metrics(  # type: ignore[override]  # as CSVLogger's
        self, metrics: Mapping[str, float], step: int | None = None
    ) -> None:
        rows = self.experiment.metrics
        last = rows[-1] if rows else None
        if last is not None and last["step"] == step:
            self.experiment.log_metrics(dict(metrics), step)  # converts the values
            if all(last.get(k, v) == v for k, v in rows[-1].items()):  # shared: step, epoch
                last.update(rows.pop())  # the same step: into its row
            return
        self._write(keep_last=False)  # every row before this one is finished
        self.experiment.log_metrics(dict(metrics), step if step is not None else len(rows))

    @rank_zero_only
    def save(self) -> None:
        self._write(keep_last=True)  # the newest step may get more metrics

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self._write(keep_last=False)

    def _write(self, keep_last: bool) -> None:
        """The rows in memory to metrics.csv, but the newest if `keep_last`."""
        self._write_back_carried()
        writer = self.experiment
        kept = writer.metrics[-1:] if keep_last else []
        writer.metrics = writer.metrics[: len(writer.metrics) - len(kept)]
        super().save()  # writes and empties writer.metrics
        writer.metrics = kept

    def _write_back_carried(self) -> None:
        """Once: the previous run's rows into a new metrics.csv (the writer, made here if not yet,
        has deleted the old one), and its columns into the writer's."""
        if self._carried is None:
            return
        header, rows = self._carried
        self._carried = None
        writer = self.experiment
        with open(writer.metrics_file_path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=sorted(header))  # Lightning's order
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = sorted(header)


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]] | None:
    """A metrics.csv's header and rows, as text; None where there is none (or no header)."""
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return (list(reader.fieldnames), rows) if reader.fieldnames else None


def mlflow_logger(
    *, tracking_uri: str, experiment_name: str, artifact_location: str, run_dir: Path
) -> Logger:
    """MLflow's logger: metrics and params in the backend store at `tracking_uri` (a SQLite file
    by default), one MLflow run per run directory, named after it and tagged `run_dir` with its
    absolute path (MLflow sets a run's artifact URI from its experiment, so the run directory
    cannot be the run's artifact location: the tag points there instead)."""
    # Here, not at the top: mlflow is an optional extra, absent unless logger=mlflow is wanted.
    import mlflow  # configures its own console handler on import: Hydra's handlers instead
    from lightning.pytorch.loggers import MLFlowLogger

    mlflow_log = logging.getLogger(mlflow.__name__)
    mlflow_log.handlers.clear()
    mlflow_log.propagate = True
    if tracking_uri.startswith(SQLITE_PREFIX):  # SQLite creates the file, not its folder
        Path(tracking_uri.removeprefix(SQLITE_PREFIX)).parent.mkdir(parents=True, exist_ok=True)
    return MLFlowLogger(
        experiment_name=experiment_name,
        run_name=run_name(run_dir),
        tracking_uri=tracking_uri,
        tags={"run_dir": str(run_dir.resolve())},
        artifact_location=str(Path(artifact_location).resolve()),
    )


def mark_stopped(loggers: Sequence[Logger]) -> None:
    """A run a signal stopped: its MLflow run KILLED, not FINISHED (Lightning ends a stopped fit
    as it ends a completed one, and MLflow's UI showed the stopped run as complete)."""
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in loggers:
        if isinstance(logger, MLFlowLogger) and logger.run_id is not None:
            logger.experiment.set_terminated(logger.run_id, status="KILLED")


def run_name(run_dir: Path) -> str:
    """The run directory as the user sees it: relative to the working directory when inside it
    (outputs/2026-01-02/12-00-00), else absolute."""
    run_dir = run_dir.resolve()
    try:
        return str(run_dir.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(run_dir)


def log_step_scalars(trainer: pl.Trainer, metrics: Mapping[str, float | Tensor]) -> None:
    """In on_train_batch_end: this step's `metrics` to rank 0's loggers where and when Lightning
    writes the step's self.log values (logging_steps.writes_step_logs; at its count of optimizer
    steps before this one), without self.log's ~0.7–1.3 ms a call here: for values Lightning
    need not keep (not in callback_metrics; reduced over DDP processes by the caller, if at all).
    A tensor is read from its device without a wait (`add_step_scalars`)."""
    if step_logs_due(trainer):
        step = trainer.fit_loop.epoch_loop._batches_that_stepped
        add_step_scalars(trainer, step, metrics)


def add_step_scalars(trainer: pl.Trainer, step: int, metrics: Mapping[str, float | Tensor]) -> None:
    """`metrics` of `step` to rank 0's loggers (the caller is rank 0): into the run's step queue
    (pipeline.step_scalars: one write a step; a tensor read from its device without a wait), or
    at once for a Trainer without one."""
    queue = step_scalars.queue_of(trainer)
    if queue is None:
        log_scalars(trainer.loggers, metrics, step)
    else:
        queue.add(step, metrics)


def add_step_read(trainer: pl.Trainer, step: int, values: Tensor, make: step_scalars.Make) -> None:
    """The scalars `make` makes of `values` (as `Tensor.tolist()` gives them) at `step`, as
    `add_step_scalars`: read from the device without a wait where the run has a step queue."""
    queue = step_scalars.queue_of(trainer)
    if queue is None:
        log_scalars(trainer.loggers, make(values.tolist()), step)
    else:
        queue.add_read(step, values, make)


def step_logs_due(trainer: pl.Trainer) -> bool:
    """In on_train_batch_end: whether `log_step_scalars` writes this step (rank 0, a logger,
    a step Lightning writes): a callback asks first, and makes its metrics only then."""
    return bool(trainer.is_global_zero and trainer.loggers and writes_step_logs(trainer))


def log_scalars(
    loggers: Sequence[Logger], metrics: Mapping[str, float | Tensor], step: int
) -> None:
    """`metrics` to every logger at `step` (rank 0's loggers). TensorBoard gets them as one
    event, a Summary holding a value a tag: Lightning's log_metrics writes one event a scalar,
    ~100 µs each on this CPU (a logging step of the gradient logger writes 16). The values are
    float32 `simple_value`s, as add_scalar writes them; a tensor is read on the host once, and
    the other loggers get the rest as they are (an int stays an int in the CSV)."""
    values = {k: float(v) if isinstance(v, Tensor) else v for k, v in metrics.items()}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            summary = Summary(
                value=[Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()]
            )
            logger.experiment._get_file_writer().add_summary(summary, step)  # torch's writer
        else:
            logger.log_metrics(values, step=step)

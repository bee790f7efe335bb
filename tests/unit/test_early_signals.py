"""A stop signal before training (pipeline.early_signals): recorded, then acted on between the
command's phases or by the run's GracefulStop; a second Ctrl-C stops at once; once training
starts, signals go where they went before; after the command, nothing of it is left."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from pipeline import build, early_signals
from pipeline.callbacks import graceful_stop_of
from pipeline.cli import compose
from pipeline.layout import LAST_CHECKPOINT
from pipeline.rundir import created_here, discard_run_dir, lock_run_dir


@pytest.fixture
def installed() -> Iterator[None]:
    """early_signals installed for the test; the process's handlers and the module's state as
    they were afterwards (a test worker runs many tests)."""
    before = {s: signal.getsignal(s) for s in early_signals.STOP_SIGNALS}
    early_signals.install()
    try:
        yield
    finally:
        early_signals.uninstall()
        assert {s: signal.getsignal(s) for s in early_signals.STOP_SIGNALS} == before


def test_a_stop_signal_is_recorded_and_a_second_ctrl_c_stops_at_once(installed: None) -> None:
    assert early_signals.received() is None
    os.kill(os.getpid(), signal.SIGTERM)  # the default action would have ended this process
    assert early_signals.received() == signal.SIGTERM
    os.kill(os.getpid(), signal.SIGINT)  # after a SIGTERM: not "twice"
    assert early_signals.received() == signal.SIGTERM and not early_signals.forced()
    early_signals.take()
    early_signals.rearm()  # a sweep's next job
    assert early_signals.received() is None
    os.kill(os.getpid(), signal.SIGINT)
    assert early_signals.received() == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    assert early_signals.forced()


def test_rearm_keeps_what_arrived_before_the_first_job(installed: None) -> None:
    os.kill(os.getpid(), signal.SIGINT)
    early_signals.rearm()  # not taken yet: the first job's run() starts
    assert early_signals.received() == signal.SIGINT


def test_once_taken_signals_go_to_the_handler_replaced(installed: None) -> None:
    assert early_signals.take() is None
    with pytest.raises(KeyboardInterrupt):  # Python's default_int_handler, as before install
        os.kill(os.getpid(), signal.SIGINT)
    assert early_signals.received() is None and not early_signals.forced()


def test_the_runs_graceful_stop_takes_a_signal_from_before_training(
    installed: None, tmp_path: Path
) -> None:
    """A SIGTERM during Lightning's setup (whose own handler sees it too, and would
    have ended the fit with an exception that exits 0): the run trains one step, saves it, and
    says which signal stopped it."""
    cfg = compose("train", ["debug=fast", "loss=mse", "trainer.max_steps=6", "logger=none",
                            "callbacks=minimal", "device=cpu"])  # fmt: skip
    datamodule = build.build_datamodule(cfg)
    loader = datamodule.train_dataloader

    def signalled_in_lightnings_setup() -> object:  # after Lightning's own handler is in
        os.kill(os.getpid(), signal.SIGTERM)
        return loader()

    datamodule.train_dataloader = signalled_in_lightnings_setup  # type: ignore[method-assign]
    trainer = build.build_trainer(cfg, tmp_path)
    trainer.fit(build.build_module(cfg), datamodule=datamodule)
    stop = graceful_stop_of(trainer)
    assert stop is not None
    assert (stop.received, stop.stopped_at_step) == (signal.SIGTERM, 1)
    assert torch.load(tmp_path / LAST_CHECKPOINT, weights_only=False)["global_step"] == 1
    assert not trainer.received_sigterm
    # Taken at the train start; recorded again from the fit's end (a sweep's next job: Hydra
    # composes it before its run starts, where a Ctrl-C was a traceback through Hydra)
    os.kill(os.getpid(), signal.SIGINT)
    assert early_signals.received() == signal.SIGINT and early_signals.after_training()
    early_signals.mark_reported()  # the job's "arrived too late" warning names it
    assert early_signals.unreported() is None
    early_signals.rearm()  # the next job's run: the record kept, and it stops that job
    assert early_signals.received() == signal.SIGINT and not early_signals.after_training()


def test_a_ctrl_c_in_lightnings_teardown_stops_nothing(installed: None, tmp_path: Path) -> None:
    """After the last step, passed on to Python's handler, a Ctrl-C in Lightning's teardown was
    its exit 1 with no line (third review); now recorded, for the run's closing warning."""

    class CtrlCInTeardown(pl.Callback):
        def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
            # Ours, not Lightning's SIGTERM handler: under DDP it killed the other ranks and
            # broadcast to them, and a completed run's teardown failed on it (exit 5)
            self.sigterm = signal.getsignal(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)

    cfg = compose("train", ["debug=fast", "loss=mse", "trainer.max_steps=2", "logger=none",
                            "callbacks=minimal", "device=cpu"])  # fmt: skip
    in_teardown = CtrlCInTeardown()
    trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=[in_teardown])
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    assert trainer.global_step == 2
    assert in_teardown.sigterm is early_signals._handle
    assert early_signals.received() == signal.SIGINT and early_signals.after_training()


def test_a_run_directory_made_here_is_removed_with_its_log_file_closed(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "run"
    lock_run_dir(run_dir)
    assert run_dir.resolve() in created_here()
    handler = logging.FileHandler(run_dir / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        discard_run_dir(run_dir)
        assert handler not in root.handlers and handler.stream is None
        # The folder it made on the way too (outputs/<date>/ was left, empty), not tmp_path
        assert not (tmp_path / "outputs").exists() and tmp_path.is_dir()
    finally:
        root.removeHandler(handler)
    lock_run_dir(tmp_path / "outputs" / "a")
    lock_run_dir(tmp_path / "outputs" / "b")
    discard_run_dir(tmp_path / "outputs" / "a")
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["b"]  # another run's: kept
    discard_run_dir(tmp_path / "outputs" / "b")
    assert not (tmp_path / "outputs").exists()
    existing = tmp_path / "mine"
    existing.mkdir()
    lock_run_dir(existing)
    assert existing.resolve() not in created_here()  # was there: never removed as made here


def test_a_command_called_in_process_leaves_no_handler_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """train.main() from a notebook or a test: a config error ended it with the recording handler
    still in, and every later Ctrl-C in that process was recorded, not raised."""
    import sys

    from pipeline import train

    before = {s: signal.getsignal(s) for s in early_signals.STOP_SIGNALS}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pipeline-train", "data.batch_size=0"])
    with pytest.raises(SystemExit) as exit_info:
        train.main()
    assert exit_info.value.code == 2
    assert {s: signal.getsignal(s) for s in early_signals.STOP_SIGNALS} == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)

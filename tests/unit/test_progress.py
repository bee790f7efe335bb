"""The progress bar redraws at most REDRAW_PER_SECOND times a second, and ends on the true count."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import RichProgressBar
from torch import Tensor, nn
from torch.utils.data import DataLoader

from pipeline.callbacks import progress
from pipeline.callbacks.progress import ProgressBar


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(1, 1)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self.w(batch).square().mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_the_bar_redraws_on_the_clock_not_every_batch_and_ends_on_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ticks = iter(range(10**6))
    # A clock 1/8 s further on each read: the bar's 1/4 s passes every second batch.
    assert progress.REDRAW_PER_SECOND == 4
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(ticks) / 8)
    drawn: list[int] = []
    lightning_redraw = RichProgressBar.on_train_batch_end

    def redraw(self: RichProgressBar, *args: Any) -> None:
        drawn.append(args[-1])  # batch_idx
        lightning_redraw(self, *args)

    monkeypatch.setattr(RichProgressBar, "on_train_batch_end", redraw)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=14, callbacks=[ProgressBar(leave=True)], logger=False,
        enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Tiny(), DataLoader(torch.ones(40, 1), batch_size=2))
    assert drawn == [0, 2, 4, 6, 8, 10, 12]  # batch 13, the last, between two redraws
    shown = capsys.readouterr().out  # not a terminal: the bar as it ended
    assert "14/14" in shown and "train/loss" in shown  # caught up at the end
    # Lightning's drawing thread wakes as often as the bar redraws, not 100 times a second.
    assert trainer.progress_bar_callback.refresh_rate == progress.REDRAW_PER_SECOND  # type: ignore[union-attr]


def test_the_bar_counts_batches_to_the_last_step_under_accumulation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 steps of 2 batches each: 6 batches, shown as 6/6 (Lightning's total was the steps left,
    so its bar ended at 6/3)."""
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, accumulate_grad_batches=2, logger=False,
        callbacks=[ProgressBar(leave=True)], enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Tiny(), DataLoader(torch.ones(40, 1), batch_size=2))
    assert "6/6" in capsys.readouterr().out


def _one_weight_module() -> Any:
    """The pipeline's module (it keeps train/loss for the bar) around one weight."""
    from pipeline.model import ResNetClassifier

    return ResNetClassifier(
        net=nn.Linear(1, 1), loss_fn=torch.nn.functional.mse_loss,
        optimizer_factory=lambda p: torch.optim.SGD(p, lr=0.1), scheduler_kwargs={"name": "none"},
        channels_last=False,
    )  # fmt: skip


def _fit_one_weight(tmp_path: Path, callbacks: list[pl.Callback], *, logger: Any, max_steps: int,
                    log_every_n_steps: int, samples: int) -> None:  # fmt: skip
    """The pipeline's module around one weight, fitted with `callbacks` on `samples` random
    pairs, 2 a batch."""
    module = _one_weight_module()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, log_every_n_steps=log_every_n_steps,
        logger=logger, callbacks=callbacks, enable_checkpointing=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    data = torch.utils.data.TensorDataset(torch.rand(samples, 1), torch.rand(samples, 1))
    trainer.fit(module, DataLoader(data, batch_size=2))


def test_the_bar_sees_the_loss_of_the_step_it_draws(tmp_path: Path) -> None:
    """Lightning calls the callbacks' batch-end hooks before the module's: the module keeps
    train/loss in training_step, so the bar (a callback) draws this step's, not the last one's."""
    from pipeline.model import logged_metric

    seen: list[tuple[float, float]] = []

    class SeesWhatTheBarSees(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            shown = logged_metric(trainer, progress.SHOWN)
            seen.append(
                (float(shown) if shown is not None else float("nan"), float(module._step_loss))
            )

    module = _one_weight_module()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=3, log_every_n_steps=1, logger=False,
        callbacks=[SeesWhatTheBarSees()], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    data = torch.utils.data.TensorDataset(torch.rand(6, 1), torch.rand(6, 1))
    trainer.fit(module, DataLoader(data, batch_size=2))
    assert len(seen) == 3 and all(shown == loss for shown, loss in seen), seen
    assert len({loss for _, loss in seen}) == 3  # three steps, three losses


def test_an_epochs_bar_line_shows_its_last_logged_loss_where_no_validation_follows(
    tmp_path: Path,
) -> None:
    """The bar shows train/loss as written to the loggers (pipeline.step_scalars), a step's at the
    next step's start; an epoch that ends without validation has its last logged step written at
    its end, so the epoch's line shows that step's loss (it showed the step before it)."""
    from helpers import Recorder
    from pipeline.callbacks.step_scalar_writer import StepScalarWriter
    from pipeline.model import TRAIN_LOSS

    bar = ProgressBar(leave=True)
    shown: list[float] = []

    class AtEpochEnd(pl.Callback):  # after the writer and the bar, as the bar's line is drawn
        def on_train_epoch_end(self, trainer: pl.Trainer, module: Any) -> None:
            shown.append(bar.get_metrics(trainer, module)[TRAIN_LOSS])

    recorder = Recorder()
    # 3 batches an epoch: epoch 0 ends at step 2
    _fit_one_weight(tmp_path, [StepScalarWriter(), bar, AtEpochEnd()], logger=recorder,
                    max_steps=5, log_every_n_steps=1, samples=6)  # fmt: skip
    losses = dict(recorder.tag(TRAIN_LOSS))
    assert sorted(losses) == [0, 1, 2, 3, 4]
    assert shown[0] == losses[2]


def test_the_bar_never_reads_the_device_before_a_step_is_written(tmp_path: Path) -> None:
    """Between the first logging step's end and the next step's start its loss is on its way to
    the host (pipeline.step_scalars); a redraw there read the module's tensor (`float()`: on a
    GPU a wait for every queued kernel, and under sync debug mode an error in the sync-free
    GPU test). Counted here as torch's `_local_scalar_dense`, what `float()` dispatches to."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from helpers import Recorder
    from pipeline.callbacks.step_scalar_writer import StepScalarWriter
    from pipeline.model import TRAIN_LOSS

    class CountsReads(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(
            self, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            CountsReads.reads += func is torch.ops.aten._local_scalar_dense.default
            return func(*args, **(kwargs or {}))

    bar = ProgressBar(leave=True)
    shown: list[dict[str, Any]] = []

    class AtBatchEnd(pl.Callback):  # after the bar: a redraw at the end of each batch
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            with CountsReads():
                shown.append(bar.get_metrics(trainer, module))

    recorder = Recorder()
    _fit_one_weight(tmp_path, [StepScalarWriter(), bar, AtBatchEnd()], logger=recorder,
                    max_steps=4, log_every_n_steps=2, samples=8)  # fmt: skip
    losses = dict(recorder.tag(TRAIN_LOSS))
    assert sorted(losses) == [1, 3]  # logging steps: every 2nd
    assert CountsReads.reads == 1  # the run's last step only (training done: the module's value)
    assert [m.get(TRAIN_LOSS) for m in shown[:3]] == [None, None, losses[1]]


def test_without_a_logger_the_bar_shows_the_modules_loss(tmp_path: Path) -> None:
    """With logger=none nothing is written, so nothing reaches the step queue: the bar showed no
    loss until the run's last step. It reads the module's value there, when new."""
    from pipeline.callbacks.step_scalar_writer import StepScalarWriter
    from pipeline.model import TRAIN_LOSS

    bar = ProgressBar(leave=True)
    shown: list[Any] = []

    class AtBatchEnd(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            shown.append(bar.get_metrics(trainer, module).get(TRAIN_LOSS))

    _fit_one_weight(tmp_path, [StepScalarWriter(), bar, AtBatchEnd()], logger=False,
                    max_steps=4, log_every_n_steps=2, samples=8)  # fmt: skip
    assert shown[0] is None and all(isinstance(v, float) for v in shown[1:]), shown

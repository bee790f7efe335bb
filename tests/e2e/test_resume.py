"""Nothing lost: a resumed run is the run that would have happened; signals stop cleanly."""

from __future__ import annotations

import csv
import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from helpers import TINY, CliProcess, run_cli, scalars, start_cli

# 6 batches an epoch: a resume after 4 steps lands mid-epoch, and the run crosses an epoch end.
RUN = ["data.image_size=32", "data.batch_size=4", "data.num_samples=24", "data.num_val_samples=4",
       "optimizer=adamw", "scheduler=cosine", "scheduler.warmup_steps=2", "scheduler.total_steps=8",
       "loss=mse", "trainer.log_every_n_steps=1", "trainer.deterministic=true", "callbacks.progress_bar=false"]  # fmt: skip


def _ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return (
            isinstance(b, list | tuple)
            and len(a) == len(b)
            and all(_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    return a == b


def test_2k_steps_equal_k_steps_plus_a_resume_for_k(tmp_path: Path, torch_home: Path) -> None:
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert (
        run_cli(
            "pipeline.train",
            [*RUN, "trainer.max_steps=8", f"hydra.run.dir={whole}"],
            tmp_path,
            torch_home,
        ).returncode
        == 0
    )
    assert (
        run_cli(
            "pipeline.train",
            [*RUN, "trainer.max_steps=4", f"hydra.run.dir={split}"],
            tmp_path,
            torch_home,
        ).returncode
        == 0
    )
    resumed = run_cli(
        "pipeline.train", [f"resume={split}", "trainer.max_steps=8"], tmp_path, torch_home
    )
    assert resumed.returncode == 0, resumed.stderr
    a, b = _ckpt(whole), _ckpt(split)
    assert a["global_step"] == b["global_step"] == 8
    assert _equal(a["state_dict"], b["state_dict"])  # weights and BatchNorm statistics, bitwise
    assert _equal(a["optimizer_states"], b["optimizer_states"])
    assert _equal(a["lr_schedulers"], b["lr_schedulers"])
    # The resumed run wrote into the same directory, and TensorBoard's curve continues without repeats.
    assert len(list((split / "tensorboard").glob("events.out.tfevents.*"))) == 2
    steps = [s for s, _ in scalars(split / "tensorboard")["train/loss"]]
    assert sorted(steps) == list(range(8))
    assert not list(tmp_path.glob("outputs/*/*"))  # no new run directory


def _start(tmp_path: Path, torch_home: Path, run: Path, *more: str) -> CliProcess:
    args = [
        *(o for o in RUN if not o.startswith("scheduler")),  # a constant lr: any number of steps
        "trainer.max_steps=500",
        f"hydra.run.dir={run}",
        *more,
    ]
    proc = start_cli("pipeline.train", args, tmp_path, torch_home)
    deadline = time.monotonic() + 120
    log = run / "train.log"
    while not (log.is_file() and "first training step" in log.read_text()):  # training has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    time.sleep(1.0)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_continues_from_its_step(
    sig: signal.Signals, tmp_path: Path, torch_home: Path
) -> None:
    run = tmp_path / "run"
    proc = _start(tmp_path, torch_home, run)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig
    step = _ckpt(run)["global_step"]
    assert 0 < step < 500
    assert (
        f"stopped by {sig.name} after step {step}; saved {run / 'checkpoints' / 'last.ckpt'}"
        in stderr.replace("\n", "")
    )
    assert "Traceback" not in stderr
    resumed = run_cli(
        "pipeline.train", [f"resume={run}", f"trainer.max_steps={step + 2}"], tmp_path, torch_home
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _ckpt(run)["global_step"] == step + 2


def test_a_second_ctrl_c_stops_at_once_with_one_line_and_exit_130(
    tmp_path: Path, torch_home: Path
) -> None:
    """The first Ctrl-C waits for the accumulation window's last batch (here far off, in a long
    epoch: an epoch's end also ends a window), the second stops at once. That was exit 1 and nothing on the terminal (Lightning exits 1 after
    a KeyboardInterrupt; hostile review)."""
    run = tmp_path / "run"
    long_window = ["trainer.accumulate_grad_batches=100000", "data.num_samples=400000"]
    proc = _start(tmp_path, torch_home, run, *long_window)
    proc.send_signal(signal.SIGINT)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert stderr.strip().splitlines()[-1] == (
        "pipeline.train: stopped at once by a second Ctrl-C, mid-step, saving nothing; "
        "no checkpoint was saved"
    )
    assert "Traceback" not in stderr


def test_resume_of_a_folder_that_is_no_run_is_a_clear_error(
    tmp_path: Path, torch_home: Path
) -> None:
    result = run_cli("pipeline.train", [f"resume={tmp_path}"], tmp_path, torch_home)
    assert result.returncode == 2
    assert f"resume={tmp_path} is not a run directory" in result.stderr


def test_a_finished_fit_leaves_the_signal_handlers_and_frees_its_model(tmp_path: Path) -> None:
    """In one process (a Hydra sweep runs its jobs so), a finished run keeps no handler: Ctrl-C
    and SIGTERM answer as before it, and its model can be freed (it leaked 90 MB a run)."""
    import gc
    import weakref

    from pipeline import build
    from pipeline.cli import compose

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    cfg = compose("train", [*TINY, "logger=tensorboard"])
    module = build.build_module(cfg)
    build.build_trainer(cfg, tmp_path).fit(module, datamodule=build.build_datamodule(cfg))
    assert {s: signal.getsignal(s) for s in before} == before
    freed = weakref.ref(module)
    del module
    gc.collect()
    assert freed() is None


def test_a_signal_in_the_last_step_stops_nothing_and_one_before_it_stops_the_run(
    tmp_path: Path,
) -> None:
    """A SIGTERM during the run's last step finds a run that ends anyway: it is complete, not
    stopped (train says so and exits 0, not 143 with advice to resume a finished run)."""
    from pipeline import build
    from pipeline.callbacks import graceful_stop_of
    from pipeline.cli import compose

    cfg = compose("train", [*TINY, "logger=none", "trainer.max_steps=3"])
    for signalled, stopped_at, steps in ((0, 1, 1), (2, None, 3)):
        run = tmp_path / f"signal-at-{signalled}"
        trainer = build.build_trainer(cfg, run, extra_callbacks=[SignalAtStep(signalled)])
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
        stop = graceful_stop_of(trainer)
        assert stop is not None and stop.received == signal.SIGTERM
        assert stop.stopped_at_step == stopped_at and trainer.global_step == steps
        assert _ckpt(run)["global_step"] == steps


@pytest.mark.parametrize(
    ("overrides", "signalled", "logged"),
    [
        (["trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1"], None, [0, 1, 2]),
        (["trainer.max_steps=6", "trainer.log_every_n_steps=4"], 4, [3, 4]),  # the stop logs 4
        # Signalled in step 2's first batch: the stop waits for its second, and the step.
        (["trainer.max_steps=6", "trainer.accumulate_grad_batches=2"], 2, [0, 1, 2]),
    ],
    ids=["accumulation", "stopped", "stopped-mid-window"],
)
def test_every_step_scalar_lands_on_the_loss_steps_once(
    overrides: list[str], signalled: int | None, logged: list[int], tmp_path: Path
) -> None:
    """train/lr and perf/images_per_sec go to the loggers without self.log, yet exactly where
    Lightning writes train/loss: not on a batch that only accumulates, and on a stop's step."""
    from pipeline import build
    from pipeline.cli import compose

    cfg = compose("train", [*TINY, "data.num_samples=32", "trainer.max_steps=3", *overrides])
    extra = [] if signalled is None else [SignalAtStep(signalled)]
    trainer = build.build_trainer(cfg, tmp_path, extra_callbacks=extra)
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    tags = scalars(tmp_path / "tensorboard")
    for tag in ("train/loss", "train/lr", "perf/images_per_sec"):
        assert [s for s, _ in tags[tag]] == logged, tag
    assert trainer.global_step == logged[-1] + 1  # the last step logged is the last taken
    losses = [v for _, v in tags["train/loss"]]
    assert len(set(losses)) == len(losses)  # each step's own loss: not the last logged one again


class SavedSteps(pl.Callback):
    """The global step of every checkpoint the run writes."""

    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_save_checkpoint(self, trainer: pl.Trainer, *args: object) -> None:
        self.steps.append(trainer.global_step)


KEEP_2 = ["callbacks.checkpoint.keep_last_k=2"]


@pytest.mark.parametrize(
    ("checkpoints", "signalled", "saves", "kept_at_stop", "kept"),
    [
        ([], 1, [2], [], []),
        (
            ["callbacks.checkpoint.every_n_steps=2"],
            1,
            [2],
            [],
            [],
        ),  # the stop's step is on schedule
        (["callbacks.checkpoint.every_n_steps=2", *KEEP_2], 2, [2, 2, 3], [2], [4, 5]),  # off it
        (
            ["callbacks.checkpoint.every_n_steps=1", *KEEP_2],
            1,
            [1, 1, 2, 2],
            [1, 2],
            [4, 5],
        ),  # on it
    ],
    ids=["last-only", "every-2", "every-2-keep-2", "every-1-keep-2"],
)
def test_a_signal_stop_writes_its_step_once_and_the_run_resumes_from_it(
    checkpoints: list[str],
    signalled: int,
    saves: list[int],
    kept_at_stop: list[int],
    kept: list[int],
    tmp_path: Path,
) -> None:
    """The stop's save was followed by ModelCheckpoint's of the same step as the epoch the stop
    ends closed (and, saving every 2 steps, by its step trigger), and by a kept step file off
    the schedule, written after last.ckpt, which the resumed run then never pruned: each a
    second ~90 MB write, and three files kept of 2. A step file the stop's step is scheduled for
    is kept (saved before last.ckpt, so the resume prunes it in turn)."""
    from pipeline import build
    from pipeline.cli import compose

    cfg = compose("train", [*TINY, "logger=none", "data.num_samples=24", "trainer.max_steps=5",
                            *checkpoints])  # fmt: skip
    saved = SavedSteps()
    run = tmp_path / "run"
    trainer = build.build_trainer(cfg, run, extra_callbacks=[SignalAtStep(signalled), saved])
    trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    assert trainer.global_step == signalled + 1 and saved.steps == saves  # the stop: one save
    assert _ckpt(run)["global_step"] == signalled + 1
    assert _kept_steps(run) == kept_at_stop
    resumed = build.build_trainer(cfg, run)
    resumed.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg),
                ckpt_path=run / "checkpoints" / "last.ckpt")  # fmt: skip
    assert resumed.global_step == 5 and _ckpt(run)["global_step"] == 5
    assert _kept_steps(run) == kept


def _kept_steps(run: Path) -> list[int]:
    """The steps of the run's kept step-NNNNNN.ckpt files, oldest first."""
    return sorted(
        int(p.stem.removeprefix("step-")) for p in (run / "checkpoints").glob("step-*.ckpt")
    )


class SignalAtStep(pl.Callback):
    """Sends this process SIGTERM as optimizer step `step` (0-based) starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes, on this thread


def test_a_resume_trains_on_with_the_optimizer_settings_given_on_its_command_line(
    tmp_path: Path, torch_home: Path
) -> None:
    """`resume=<run> optimizer.lr=…`: the config says the new lr, and the run trains at it (the
    optimizer's restored state used to keep the old one while config.yaml said the new)."""
    from pipeline.schedules import cosine_factor

    run = tmp_path / "run"
    first = run_cli(
        "pipeline.train",
        [*RUN, "trainer.max_steps=4", f"hydra.run.dir={run}"],
        tmp_path,
        torch_home,
    )
    assert first.returncode == 0, first.stderr
    args = [f"resume={run}", "trainer.max_steps=6", "optimizer.lr=0.01", "optimizer.weight_decay=0"]
    resumed = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert resumed.returncode == 0, resumed.stderr
    lr = dict(scalars(run / "tensorboard")["train/lr"])
    factor = {s: cosine_factor(s, warmup_steps=2, total_steps=8, min_lr_ratio=0.0) for s in lr}
    assert lr[3] == pytest.approx(1e-3 * factor[3])  # adamw's default, before the resume
    assert [lr[4], lr[5]] == pytest.approx([0.01 * factor[4], 0.01 * factor[5]])
    said = (run / "train.log").read_text()
    assert "optimizer.lr=0.01 (the checkpoint had 0.001)" in said
    assert "optimizer.weight_decay=0 (the checkpoint had 0.01)" in said
    ckpt = _ckpt(run)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["weight_decay"] == 0


def _finished_then_resumed(
    run: Path, args: list[str], more: str, tmp_path: Path, torch_home: Path, *, refused: str
) -> None:
    """Train `args` into `run` to its end; a bare resume of it exits 2 with a last line ending in
    `refused`; a resume with `more` trains on."""
    first = run_cli("pipeline.train", [*args, f"hydra.run.dir={run}"], tmp_path, torch_home)
    assert first.returncode == 0, first.stderr
    done = run_cli("pipeline.train", [f"resume={run}"], tmp_path, torch_home)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(refused)
    resumed = run_cli("pipeline.train", [f"resume={run}", more], tmp_path, torch_home)
    assert resumed.returncode == 0, resumed.stderr


def test_a_run_extended_from_an_epochs_end_has_every_tag_and_csv_row_at_its_step(
    tmp_path: Path, torch_home: Path
) -> None:
    """8 steps of 4-batch epochs, then a resume to 12. Before: Lightning restarted the finished
    epoch with a turn that trained nothing yet counted a step, so every tag after the resume
    was one step late (val/loss at 12, train/loss at 9 … 12) and the gradient tags measured
    other steps than train/loss; Lightning's CSV writer deleted metrics.csv's earlier rows, and
    wrote val/loss in a row of its own; a resume with no steps left trained nothing, exit 0."""
    run = tmp_path / "run"
    args = [*RUN, "data.num_samples=16", "scheduler.total_steps=12", "trainer.max_steps=8",
            "logger=[tensorboard,csv]"]  # fmt: skip
    _finished_then_resumed(
        run, args, "trainer.max_steps=12", tmp_path, torch_home,
        refused="is at step 8 and trainer.max_steps=8: there is nothing left to train; to train "
        "on, give the run more steps, e.g. trainer.max_steps=16",
    )  # fmt: skip
    tags = scalars(run / "tensorboard")
    for tag in ("train/loss", "train/lr", "grad_norm/total", "perf/images_per_sec"):
        assert [s for s, _ in tags[tag]] == list(range(12)), tag
    assert [s for s, _ in tags["val/loss"]] == [3, 7, 11]  # each epoch's end
    with open(run / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(12))  # one row a step, both runs'
    for tag in ("train/loss", "val/loss"):
        from_csv = [(int(r["step"]), float(r[tag])) for r in rows if r[tag]]
        assert [s for s, _ in from_csv] == [s for s, _ in tags[tag]], tag
        assert [v for _, v in from_csv] == pytest.approx([v for _, v in tags[tag]]), tag


def test_a_run_bounded_by_epochs_resumes_with_more_epochs_and_not_without(
    tmp_path: Path, torch_home: Path
) -> None:
    """A finished max_epochs run: a resume with nothing left trained nothing and exited 0, and
    `trainer.max_epochs=3` on the resume clashed with the saved `+trainer.max_epochs=2`."""
    run = tmp_path / "run"
    args = [*RUN, "data.num_samples=8", "trainer.max_steps=-1", "trainer.max_epochs=2"]
    _finished_then_resumed(
        run, args, "trainer.max_epochs=3", tmp_path, torch_home,
        refused="has finished epoch 2 and trainer.max_epochs=2: there is nothing left to train; "
        "to train on, give the run more epochs, e.g. trainer.max_epochs=4",
    )  # fmt: skip
    assert _ckpt(run)["global_step"] == 6  # 2 batches an epoch, 3 epochs

"""The non-finite guard's deferred check (what a GPU with a fused optimizer takes) stops with
the same message and saves the same state as the immediate check, though it reads the flag
steps later. Forced here on the CPU, where torch's fused SGD skips a step on found_inf too."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from helpers import DIVERGED, TINY
from pipeline.nonfinite_guard import DEFERRED_LAG

LAG = 3


def _with_guard(trainer: pl.Trainer, *, deferred: bool, lag: int = DEFERRED_LAG) -> None:
    """Swap the pipeline's guard for one built with the check to test."""
    from pipeline.callbacks import NonFiniteGuard

    i, guard = next(
        (i, c) for i, c in enumerate(trainer.callbacks) if isinstance(c, NonFiniteGuard)
    )
    trainer.callbacks[i] = NonFiniteGuard(
        mode=guard.mode,
        loss_name=guard.loss_name,
        checkpoint_path=guard.checkpoint_path,
        deferred=deferred,
        lag=lag,
    )


def _diverge(
    tmp_path: Path, *, deferred: bool, extra: list[str], plant: pl.Callback | None = None
) -> tuple[str, dict[str, Any], int]:
    from pipeline import build
    from pipeline.cli import compose
    from pipeline.errors import DivergenceError

    # lr 1e20 overflows the seed's loss within a few steps, whatever the random init.
    cfg = compose(
        "train",
        [
            *TINY,
            "optimizer.lr=1e20",
            "optimizer.fused=true",
            "trainer.max_steps=30",
            "data.num_samples=160",
            "logger=none",
            *extra,
        ],
    )
    run_dir = tmp_path / ("deferred" if deferred else "at_once")
    trainer = build.build_trainer(cfg, run_dir, extra_callbacks=[plant] if plant else [])
    _with_guard(trainer, deferred=deferred, lag=LAG)
    pl.seed_everything(cfg.seed, verbose=False)  # the same initial weights in both runs
    with pytest.raises(DivergenceError) as stop:
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    ckpt["divergence.json"] = json.loads((run_dir / "divergence.json").read_text())
    return str(stop.value), ckpt, trainer.global_step


@pytest.mark.gpu  # on CUDA where there is one: the path a GPU run takes
@pytest.mark.parametrize(
    "extra", [[], ["optimizer=adam", "optimizer.lr=1e20"]], ids=["sgd", "adam"]
)
def test_deferred_check_saves_what_the_immediate_check_saves(
    tmp_path: Path, torch_home: Path, extra: list[str]
) -> None:
    message, at_once, step = _diverge(tmp_path, deferred=False, extra=extra)
    deferred_message, deferred, deferred_step = _diverge(tmp_path, deferred=True, extra=extra)

    assert DIVERGED.search(message)  # the same step and loss, each its own run directory
    assert _close(deferred_message, message.replace("/at_once", "/deferred"))
    # divergence.json: the same step, loss, samples and block norms, read lag steps later.
    records = [ckpt.pop("divergence.json") for ckpt in (at_once, deferred)]
    assert records[1]["checkpoint_global_step"] == records[0]["checkpoint_global_step"] + LAG + 1
    for record in records:
        record.pop("checkpoint_global_step")
    assert _close(records[0], records[1])
    assert records[0]["indices"] and records[0]["grad_norm"]["last_finite"] is not None
    # Read after LAG more steps: the bad step and those LAG were counted and updated nothing.
    assert deferred_step == step + LAG + 1
    assert at_once["state_dict"].keys() == deferred["state_dict"].keys()
    for name, value in at_once["state_dict"].items():  # weights and BatchNorm statistics
        assert _same(deferred["state_dict"][name], value), name
        assert not value.is_floating_point() or bool(torch.isfinite(value).all()), name
    # Optimizer state (momentum, Adam's moments and step count) as before the bad step.
    states = [ckpt["optimizer_states"][0]["state"] for ckpt in (at_once, deferred)]
    assert states[0].keys() == states[1].keys()
    for index, state in states[0].items():
        for key, value in state.items():
            assert _same(torch.as_tensor(states[1][index][key]), torch.as_tensor(value)), key


class _InfRunningVariance(pl.Callback):
    """After step `step`'s backward pass, an inf in a BatchNorm running variance: the loss stays
    finite (training normalises by the batch's own statistics). Planted, not grown: an lr that
    overflowed a running variance first at one thread overflowed the loss first at another."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step == self.step:
            pl_module.net.layer1[0].bn1.running_var[0] = math.inf  # type: ignore[index, union-attr]


def test_the_deferred_check_names_the_statistic_when_an_epoch_ends_before_its_read(
    tmp_path: Path, torch_home: Path
) -> None:
    """BatchNorm's running variance overflows at step 5 while the loss stays finite; the epoch
    ends (4 batches) before the deferred flag's read, and the epoch's checkpoint reads it and
    puts the statistics back. The message then named no statistic, and said the finite loss
    "became" its value; divergence.json named none either."""
    extra = ["optimizer.lr=1e-3", "data.num_samples=16"]
    message, at_once, _ = _diverge(
        tmp_path, deferred=False, extra=extra, plant=_InfRunningVariance(5)
    )
    deferred_message, deferred, _ = _diverge(
        tmp_path, deferred=True, extra=extra, plant=_InfRunningVariance(5)
    )
    assert message.startswith(
        "BatchNorm's running statistic layer1.0.bn1.running_var became inf or NaN at step 5, "
        "while train/loss was still finite"
    ), message
    assert deferred_message == message.replace("/at_once", "/deferred")
    statistic = at_once["divergence.json"]["first_nonfinite_statistic"]
    assert statistic and deferred["divergence.json"]["first_nonfinite_statistic"] == statistic


def test_a_deferred_stop_never_leaves_non_finite_weights_in_last_ckpt(
    tmp_path: Path, torch_home: Path
) -> None:
    """16-true at lr 1e20: step 0's gradients are finite, its update overflows the float16
    weights, and the flags saying so are read at the epoch's end (4 batches), by its checkpoint.
    That checkpoint put back BatchNorm's statistics only and wrote the inf weights to last.ckpt
    (a resume refused it as damaged), and the message said no checkpoint was saved."""
    from pipeline import build
    from pipeline.cli import compose
    from pipeline.errors import DivergenceError

    cfg = compose("train", [*TINY, "precision=16-true", "optimizer.lr=1e20",
                            "optimizer.fused=true", "trainer.max_steps=10", "logger=none"])  # fmt: skip
    run = tmp_path / "run"
    trainer = build.build_trainer(cfg, run)
    with pytest.raises(DivergenceError) as stop:
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    last = run / "checkpoints" / "last.ckpt"
    if "no checkpoint was saved" in str(stop.value):
        assert not last.exists()  # this run's first save would have been the damaged one
    else:
        for name, value in torch.load(last, weights_only=True)["state_dict"].items():
            assert not value.is_floating_point() or bool(torch.isfinite(value).all()), name


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def _close(a: Any, b: Any) -> bool:
    """Equal on a CPU. On a GPU (see _same) a record's finite numbers, and those in a message,
    within 1%: its block norms are sums that cuDNN's backward and index_add_'s atomics order
    differently from run to run."""
    if not torch.cuda.is_available():
        return bool(a == b)
    if isinstance(a, str) and isinstance(b, str):
        numbers = [NUMBER.findall(text) for text in (a, b)]
        parsed = [[float(n) if "." in n or "e" in n else int(n) for n in ns] for ns in numbers]
        return NUMBER.sub("#", a) == NUMBER.sub("#", b) and _close(*parsed)  # steps exact
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isfinite(a) and math.isfinite(b):
        return abs(a - b) <= 1e-2 * max(abs(a), abs(b))
    return bool(a == b) or (a != a and b != b)  # NaN is NaN


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise on a CPU. On a GPU two runs differ from step 0 (TF32 convolutions, cuDNN's
    backward sums in any order): within 1% in norm there, where one more update at lr 1e20,
    or a NaN, is off by orders of magnitude."""
    if a.device.type == "cpu" or not a.is_floating_point():
        return torch.equal(a, b)
    return bool(torch.linalg.vector_norm(a - b) <= 1e-2 * torch.linalg.vector_norm(b))


def test_deferred_warn_mode_warns_once_and_trains_on(tmp_path: Path, torch_home: Path) -> None:
    from pipeline import build
    from pipeline.cli import compose

    cfg = compose(
        "train",
        [
            *TINY,
            "optimizer.lr=1e20",
            "optimizer.fused=true",
            "trainer.max_steps=12",
            "data.num_samples=80",
            "logger=none",
            "trainer.detect_nonfinite=warn",
        ],
    )
    trainer = build.build_trainer(cfg, tmp_path)
    _with_guard(trainer, deferred=True)
    with pytest.warns(UserWarning, match=DIVERGED) as caught:
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    assert trainer.global_step == 12
    assert sum(bool(DIVERGED.search(str(w.message))) for w in caught) == 1


class _InfAtFirstStep(pl.Callback):
    """A non-finite gradient on the fit's first step, before the guard looks."""

    def on_before_optimizer_step(self, trainer: pl.Trainer, module: Any, optimizer: Any) -> None:
        if trainer.global_step == 0:
            next(module.parameters()).grad.fill_(float("inf"))


@pytest.mark.parametrize("deferred", [False, True], ids=["at_once", "deferred"])
def test_a_first_step_gone_non_finite_saves_no_optimizer_state(
    tmp_path: Path, deferred: bool
) -> None:
    """Deferred, the fused SGD skipped the first step on the device, but made its momentum
    buffers first (torch.empty_like) and never filled them: the divergence checkpoint held that
    memory as momentum, and a resume trained on it. Now neither check saves any state there."""
    from pipeline import build
    from pipeline.cli import compose
    from pipeline.errors import DivergenceError

    cfg = compose("train", [*TINY, "optimizer.fused=true", "trainer.max_steps=10",
                            "data.num_samples=80", "logger=none"])  # fmt: skip
    trainer = build.build_trainer(cfg, tmp_path)
    trainer.callbacks.insert(0, _InfAtFirstStep())
    _with_guard(trainer, deferred=deferred, lag=LAG)
    pl.seed_everything(cfg.seed, verbose=False)
    with pytest.raises(DivergenceError, match="at step 0"):
        trainer.fit(build.build_module(cfg), datamodule=build.build_datamodule(cfg))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["optimizer_states"][0]["state"] == {}

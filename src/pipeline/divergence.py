"""What a run that stopped on a non-finite value leaves behind: `divergence.json` in its run
directory, read by `python -m pipeline.replay`, and the message it stops with. Written once, by
the non-finite guard, on rank 0.

Fields:
  step                    the optimizer step whose loss or gradients were non-finite (0-based)
  loss                    its loss (a string for inf/NaN: JSON has no such numbers)
  first_nonfinite_block   the first block, in forward order, whose gradient norm overflowed or is NaN (or null)
  grad_norm               {"last_finite": {"step", <block>..., "total"}, "failing": {...}}: per-block
                          gradient norms of the last finite logging step and of the failing step
                          (null where they were not measured)
  indices                 the failing step's training samples, all micro-batches in order
  micro_batches           those samples, one list per micro-batch (accumulation)
  checkpoint_global_step  the step counter saved in checkpoints/last.ckpt with the last finite
                          state; null when the weights were already non-finite and nothing was saved
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from pipeline.config_rules import is_int
from pipeline.errors import ConfigError
from pipeline.gradients import BLOCKS, norms_by_block
from pipeline.layout import DIVERGENCE_FILE
from pipeline.overrides import shell_word
from pipeline.resources import parameter_dtype


def finite_or_text(value: float) -> float | str:
    """A float JSON can hold: inf and NaN become 'inf', '-inf', 'nan'."""
    return value if math.isfinite(value) else str(value)


def block_norm_record(norms: Tensor | None, index: Tensor | None) -> dict[str, float | str] | None:
    """Per-tensor gradient norms → {block: norm, ..., "total": norm} (one host transfer)."""
    if norms is None or index is None:
        return None
    values = norms_by_block(norms, index, len(BLOCKS)).tolist()
    return {b: finite_or_text(v) for b, v in zip((*BLOCKS, "total"), values, strict=True)}


def first_nonfinite_block(record: dict[str, float | str] | None) -> str | None:
    """The first block in forward order (conv1, bn1, layer1 … layer4, fc) whose norm is not finite."""
    if record is None:
        return None
    return next((b for b in BLOCKS if isinstance(record.get(b), str)), None)


def divergence_record(
    *,
    step: int,
    loss: float,
    failing: dict[str, float | str] | None,
    last_finite: tuple[int, dict[str, float | str] | None] | None,
    micro_batches: Sequence[Sequence[int]],
    checkpoint_global_step: int | None,
    statistic: str | None = None,
) -> dict[str, Any]:
    last = None
    if last_finite is not None and last_finite[1] is not None:
        last = {"step": last_finite[0], **last_finite[1]}
    return {
        "step": step,
        "loss": finite_or_text(loss),
        "first_nonfinite_block": first_nonfinite_block(failing),
        "first_nonfinite_statistic": statistic,  # a BatchNorm buffer, when it went first
        "grad_norm": {"last_finite": last, "failing": failing},
        "indices": [i for batch in micro_batches for i in batch],
        "micro_batches": [list(batch) for batch in micro_batches],
        "checkpoint_global_step": checkpoint_global_step,
    }


def write_divergence(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write `run_dir/divergence.json` atomically (beside it, then renamed over it). A record
    with no last finite logging step keeps the one of the record it replaces, where that one is
    from before its step: a resumed run that diverges again before a logging step of its own
    wrote `last_finite: null` over what the first attempt had measured."""
    path = run_dir / DIVERGENCE_FILE
    if record["grad_norm"]["last_finite"] is None:
        record = {**record, "grad_norm": {**record["grad_norm"],
                  "last_finite": earlier_last_finite(run_dir, record["step"])}}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def earlier_last_finite(run_dir: Path, step: int) -> dict[str, Any] | None:
    """The last finite logging step's record (`grad_norm.last_finite`) of `run_dir`'s
    divergence.json where it is from before `step`, else None (no file, or not the guard's)."""
    try:
        last = read_divergence(run_dir)["grad_norm"]["last_finite"]
    except (ConfigError, KeyError, TypeError):
        return None
    if isinstance(last, dict) and is_int(last.get("step")) and last["step"] < step:
        return last
    return None


def read_divergence(run_dir: Path) -> dict[str, Any]:
    """`run_dir`'s divergence.json, with the fields replay reads checked; ConfigError (one line)
    where it is not one the guard wrote (edited, cut short, emptied)."""
    path = run_dir / DIVERGENCE_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError([_not_a_record(path, f"it cannot be read as JSON: {exc}")]) from None
    problem = _record_problem(record)
    if problem is not None:
        raise ConfigError([_not_a_record(path, problem)])
    return dict(record)


def _record_problem(record: Any) -> str | None:
    """Why `record` is not a divergence record replay can use, or None."""
    if not isinstance(record, dict):
        return f"it holds a {type(record).__name__}, not an object"
    if not is_int(record.get("step")):
        return "its step is not an integer"
    if not (
        record.get("checkpoint_global_step") is None or is_int(record["checkpoint_global_step"])
    ):
        return "its checkpoint_global_step is neither an integer nor null"
    batches = record.get("micro_batches")
    if not (
        isinstance(batches, list)
        and batches
        and all(isinstance(b, list) and b and all(is_int(i) for i in b) for b in batches)
    ):
        return "its micro_batches are not lists of sample indices"
    if not all(0 <= i < 2**63 for b in batches for i in b):
        return "its micro_batches hold an index outside 0 … 2**63 − 1"
    if "loss" not in record or not isinstance(record.get("indices"), list):
        return "it has no loss or no indices"
    return None


def _not_a_record(path: Path, why: str) -> str:
    return (
        f"{path} is not the record the non-finite guard writes ({why}); it cannot be replayed: "
        "run the command that diverged again to write it anew"
    )


FULL_PRECISIONS = ("32-true", "64-true")  # no range to blame below float32's


def divergence_message(
    step: int,
    loss_value: float,
    loss_name: str,
    saved_to: Path | None,
    first_block: str | None = None,
    record: Path | None = None,
    statistic: str | None = None,
    precision: str = "32-true",
) -> str:
    """What happened, where it shows first, why, and what to do. `statistic`: the BatchNorm
    buffer that went non-finite while the loss and the gradients were still finite. At step 0
    no update has happened yet, so neither the loss's lack of a minimum nor the learning rate
    can be why (a bf16-true run stopping there was told to blame the seed's loss). The run's
    `precision` is blamed, and 32-true advised, only where it is a lower one."""
    low = precision not in FULL_PRECISIONS
    if step == 0:
        why = (
            f"it is the first step, before any update, so the initial weights or precision="
            f"{precision}'s range made it, not training: check model.weights, or try "
            "precision=32-true (pipeline.replay shows whether float32 holds)"
            if low
            else "it is the first step, before any update, so the initial weights made it, not "
            "training: check model.weights"
        )
    elif loss_name == "sum_diff":
        why = (
            "the seed's loss (pred − labels).sum() has no minimum, so any optimizer drives the "
            "logits to −∞ until they overflow (the sooner, the higher optimizer.lr); use loss=mse "
            "or loss=cross_entropy for long runs, or fewer steps (trainer.max_steps)"
        )
    else:
        why = "lower optimizer.lr" + (
            ", set trainer.gradient_clip_val=1.0, or use precision=32-true"
            if low
            else " or set trainer.gradient_clip_val=1.0"
        )
    saved = f"; the last finite state is in {saved_to}" if saved_to else ""
    head = (
        f"BatchNorm's running statistic {statistic} became inf or NaN at step {step}, while "
        f"train/loss was still finite ({loss_value}): activations outgrew "
        f"{str(parameter_dtype(precision)).removeprefix('torch.')} (evaluation would normalise "
        "by it)"
        if statistic
        else what_went(step, loss_value, first_block)
    )
    return f"{head}: {why}{saved}{replay_hint(record)}"


def what_went(step: int, loss_value: float, first_block: str | None) -> str:
    """The loss that became inf or NaN, or, where it stayed finite, the gradients."""
    if math.isfinite(loss_value) and first_block:
        return (
            f"the gradients overflowed or went NaN at step {step} while train/loss was finite "
            f"({loss_value})"
            f"{where(first_block)}"
        )
    return f"train/loss became {loss_value} at step {step}{where(first_block)}"


def weights_nonfinite_message(
    step: int, loss_value: float, first_block: str | None, record: Path | None
) -> str:
    """An optimizer step made the weights non-finite: nothing was saved."""
    return (
        f"{what_went(step, loss_value, first_block)}: an optimizer step had already "
        "made the weights non-finite (lower optimizer.lr, or set trainer.gradient_clip_val=1.0); "
        "no checkpoint was saved, an earlier last.ckpt is unchanged"
        + (f"; details in {record}" if record else "")
    )


def where(first_block: str | None) -> str:
    return (
        f" (the first block, in forward order, whose gradient norm overflowed or is NaN: "
        f"{first_block})"
        if first_block
        else ""
    )


def replay_hint(record: Path | None) -> str:
    if record is None:
        return ""
    command = shell_word(str(record.parent))
    return f"; details in {record}; find the first bad operation with: python -m pipeline.replay {command}"

"""What a run that stopped on a non-finite value leaves behind: `divergence.json` in its run
directory, read by `python -m pipeline.replay`. Written once, by the non-finite guard, on rank 0.

Fields:
  step                    the optimizer step whose loss or gradients were non-finite (0-based)
  loss                    its loss (a string for inf/NaN: JSON has no such numbers)
  first_nonfinite_block   the first block, in forward order, whose gradient norm is inf or NaN (or null)
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

from pipeline.gradients import BLOCKS, norms_by_block
from pipeline.layout import DIVERGENCE_FILE


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
) -> dict[str, Any]:
    last = None
    if last_finite is not None and last_finite[1] is not None:
        last = {"step": last_finite[0], **last_finite[1]}
    return {
        "step": step,
        "loss": finite_or_text(loss),
        "first_nonfinite_block": first_nonfinite_block(failing),
        "grad_norm": {"last_finite": last, "failing": failing},
        "indices": [i for batch in micro_batches for i in batch],
        "micro_batches": [list(batch) for batch in micro_batches],
        "checkpoint_global_step": checkpoint_global_step,
    }


def write_divergence(run_dir: Path, record: dict[str, Any]) -> Path:
    """Write `run_dir/divergence.json` atomically (beside it, then renamed over it)."""
    path = run_dir / DIVERGENCE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(partial, path)
    return path


def read_divergence(run_dir: Path) -> dict[str, Any]:
    record = json.loads((run_dir / DIVERGENCE_FILE).read_text())
    assert isinstance(record, dict)
    return record

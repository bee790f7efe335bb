"""`python -m pipeline.replay <run dir>`: re-run the step that stopped a run on a non-finite value,
and name the first operation that produced inf or NaN.

Reads the run's `divergence.json` (written by the non-finite guard) and `checkpoints/last.ckpt`,
which holds the last finite state: the weights, BatchNorm statistics and optimizer state before
the failing step. The failing batch is made again from its sample indices (the data are a pure
function of them), and the step runs on the CPU at the run's precision (bf16-mixed and 16-mixed
as autocast in bfloat16 or float16 around the forward, bf16-true and 16-true as half weights),
then at float32 where that is another, and at float64, each with a forward hook on every leaf
module (the first whose output is non-finite) and autograd's anomaly mode in the backward (the
first operation that returned NaN). Where the step's forward and backward stay finite, it takes
the optimizer step from the saved state and runs the next forward. Prints what each precision
found and whether float64 overflows too (a true divergence) or only the run's precision did. A
GPU run's kernels round differently from the CPU's: its replay can differ in the last bits.

Exit codes: 0 reproduced and named; 1 nothing non-finite at any precision; 2 a directory
without divergence.json or a usable last.ckpt.
"""

from __future__ import annotations

# Before the imports below: a rank Lightning's import would end on is one line.
if __name__ == "__main__":  # python -m pipeline.replay
    from pipeline.launch_rank import refuse_unreadable_rank as _refuse

    _refuse("pipeline.replay")

import contextlib
import copy
import json
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

from pipeline import build
from pipeline.checkpoints import read_checkpoint, run_config_of
from pipeline.data import make_batch
from pipeline.divergence import read_divergence
from pipeline.errors import CONFIG_ERROR_EXIT_CODE, NOT_REPRODUCED_EXIT_CODE, ConfigError
from pipeline.layout import DIVERGENCE_FILE, LAST_CHECKPOINT, RUN_JSON
from pipeline.losses import LOSSES
from pipeline.model import ResNetClassifier


def is_finite(t: Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def first_nonfinite_leaf(net: nn.Module, images: Tensor) -> tuple[str | None, Tensor]:
    """Run `net` on `images` with a forward hook on every leaf module; return what first held
    inf or NaN, in execution order: a leaf's output ("the output of layer3.0.conv1 (Conv2d)"),
    or a floating buffer the leaf's forward updated, BatchNorm's running statistics (in training
    a batch is normalised by its own, so the output stays finite); None if nothing did; and the
    output. The hooks are removed before it returns. Cost: one isfinite pass per leaf output."""
    first: list[str] = []

    def hook(name: str) -> Any:
        def check(module: nn.Module, inputs: Any, output: Any) -> None:
            kind = type(module).__name__
            if not first and isinstance(output, Tensor) and not is_finite(output):
                first.append(f"the output of {name} ({kind})")
            for buffer, b in module.named_buffers(recurse=False):
                if not first and b.is_floating_point() and not is_finite(b):
                    first.append(
                        f"{name}.{buffer} ({kind}'s running statistic; its output stayed finite)"
                    )

        return check

    leaves = [(n, m) for n, m in net.named_modules() if n and not any(m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        output = net(images)
    finally:
        for h in handles:
            h.remove()
    return (first[0] if first else None), output


ANOMALY = re.compile(r"Function '(\w+)' returned nan values")


def backward_nonfinite_op(loss: Tensor, net: nn.Module) -> str | None:
    """Backward from `loss` under anomaly mode: the autograd operation that first returned NaN
    (anomaly mode checks NaN only); else the first parameter in backward order (the reverse of
    forward order) whose gradient holds inf; else one whose gradient is finite but whose norm
    overflows (what the non-finite guard checks: a norm per tensor). None if all are finite."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore"
            )  # "Anomaly Detection has been enabled", "Error detected in"
            with torch.autograd.detect_anomaly(check_nan=True):
                loss.backward()
    except RuntimeError as exc:
        found = ANOMALY.search(str(exc))
        if found is None:
            raise
        return f"operation {found.group(1)} returned NaN"
    for name, p in reversed(list(net.named_parameters())):
        if p.grad is not None and not is_finite(p.grad):
            return f"the gradient of {name} holds inf"
    for name, p in reversed(list(net.named_parameters())):
        if p.grad is not None and not is_finite(torch.linalg.vector_norm(p.grad)):
            return f"the gradient of {name} is finite, but its norm overflows {str(p.grad.dtype).removeprefix('torch.')}"
    return None


@dataclass(frozen=True)
class Finding:
    stage: str  # forward, loss, backward, optimizer step, next forward
    where: str

    def __str__(self) -> str:
        return f"{self.stage}: {self.where}"


@dataclass(frozen=True)
class Replayed:
    """A precision a step is replayed at on the CPU: the weights' and inputs' dtype, and the
    forward's under autocast (mixed precision)."""

    name: str  # as printed: the run's precision string, or float32 / float64
    dtype: torch.dtype
    autocast: torch.dtype | None = None

    def forward_context(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.autocast)


FLOAT32 = Replayed("float32", torch.float32)
FLOAT64 = Replayed("float64", torch.float64)


def replayed_precisions(precision: str, on_gpu: bool) -> list[Replayed]:
    """The run's precision on the CPU, then float32 where that is another, then float64. 16-mixed
    is float16 autocast as on a GPU, bfloat16 for a run on the CPU (where Lightning runs it so:
    "AMP with fp16 is not supported on CPU")."""
    half = torch.float16 if on_gpu else torch.bfloat16
    own = {
        "32-true": FLOAT32,
        "64-true": FLOAT64,
        "bf16-mixed": Replayed("bf16-mixed", torch.float32, torch.bfloat16),
        "16-mixed": Replayed("16-mixed", torch.float32, half),
        "bf16-true": Replayed("bf16-true", torch.bfloat16),
        "16-true": Replayed("16-true", torch.float16),
    }.get(precision, FLOAT32)
    if own == FLOAT64:
        return [FLOAT64]
    return [own, FLOAT64] if own == FLOAT32 else [own, FLOAT32, FLOAT64]


@dataclass(frozen=True)
class Step:
    """What replaying one training step needs, all on the CPU."""

    module: ResNetClassifier  # the last finite state
    batches: list[tuple[Tensor, Tensor]]  # (images, labels) per micro-batch
    optimizer_state: dict[str, Any]
    make_optimizer: Any  # parameters → optimizer
    clip_val: float | None
    clip_algorithm: str
    unbounded_loss: bool = False  # the seed's loss: no minimum, so any precision overflows later


def replay(step: Step, precision: Replayed) -> Finding | None:
    """The failing step at `precision`: each micro-batch's forward, loss and backward; then, if
    all stayed finite, the optimizer step and the next forward on the first micro-batch."""
    dtype = precision.dtype
    model = copy.deepcopy(step.module).to(dtype).train()
    net, loss_fn = model.net, model.loss_fn
    batches = [(x.to(dtype), y.to(dtype) if y.is_floating_point() else y) for x, y in step.batches]
    for images, labels in batches:
        with precision.forward_context():  # the loss too, as in training_step
            leaf, pred = first_nonfinite_leaf(net, images)
            if leaf is not None:
                return Finding("forward", leaf)
            loss = loss_fn(pred, labels) / len(batches)
        if not is_finite(loss):
            return Finding("loss", f"the loss is {float(loss.detach())} from finite logits")
        bad = backward_nonfinite_op(loss, net)
        if bad is not None:
            return Finding("backward", bad)
    if step.clip_val:
        if step.clip_algorithm == "value":
            nn.utils.clip_grad_value_(model.parameters(), step.clip_val)
        else:
            nn.utils.clip_grad_norm_(model.parameters(), step.clip_val)
    optimizer = step.make_optimizer(model.parameters())
    optimizer.load_state_dict(step.optimizer_state)  # its floating state is cast to `dtype`
    optimizer.step()
    bad_weights = [n for n, p in net.named_parameters() if not is_finite(p)]
    if bad_weights:
        return Finding("optimizer step", f"it made {bad_weights[0]} non-finite")
    with torch.no_grad(), precision.forward_context():
        leaf, pred = first_nonfinite_leaf(net, batches[0][0])
        if leaf is not None:
            return Finding("next forward, after the optimizer step", leaf)
        if not is_finite(loss_fn(pred, batches[0][1])):
            return Finding("next forward, after the optimizer step", "the loss")
    return None


def load_step(run_dir: Path) -> tuple[Step, dict[str, Any], list[Replayed]]:
    """The failing step of `run_dir`, its divergence.json and the precisions to replay it at (the
    run's first). ConfigError (one line) where the directory cannot be replayed."""
    if not run_dir.is_dir():
        raise ConfigError(
            [
                f"{run_dir} is not a run directory ({'a file' if run_dir.exists() else 'no such folder'}); give the folder of the run that stopped"
            ]
        )
    if not (run_dir / DIVERGENCE_FILE).is_file():
        raise ConfigError(
            [
                f"{run_dir} has no {DIVERGENCE_FILE}: only a run the non-finite guard stopped can be replayed"
            ]
        )
    ckpt_path = run_dir / LAST_CHECKPOINT
    if not ckpt_path.is_file():
        raise ConfigError([f"{run_dir} has no {LAST_CHECKPOINT} to replay from"])
    record = read_divergence(run_dir)
    if record.get("checkpoint_global_step") is None:
        raise ConfigError(
            [f"{run_dir}: the weights were already non-finite when the run stopped, so no state before "
             f"step {record['step']} was saved; lower optimizer.lr and run again"]
        )  # fmt: skip
    ckpt = read_checkpoint(str(ckpt_path))
    if ckpt["global_step"] != record["checkpoint_global_step"]:
        raise ConfigError(
            [f"{ckpt_path} is from step {ckpt['global_step']}, not the state saved when the run "
             f"stopped ({record['checkpoint_global_step']}); it was overwritten by a later run"]
        )  # fmt: skip
    cfg = OmegaConf.create(run_config_of(ckpt, str(ckpt_path)))
    cfg.model.weights = None  # the checkpoint's weights replace them
    cfg.model.compile = False
    cfg.model.channels_last = False
    precisions = replayed_precisions(str(cfg.precision), ran_on_gpu(run_dir, cfg))
    cfg.device.accelerator = "cpu"
    module = loaded(build.build_module(cfg), ckpt["state_dict"])
    batches = [
        make_batch(torch.tensor(b, dtype=torch.int64), seed=cfg.seed, split="train",
                   image_size=cfg.data.image_size, channels=cfg.data.channels,
                   num_classes=cfg.model.num_classes, label_kind=LOSSES[cfg.loss.name].label_kind,
                   device="cpu")
        for b in record["micro_batches"]
    ]  # fmt: skip
    step = Step(
        module=module,
        batches=batches,
        optimizer_state=ckpt["optimizer_states"][0],
        make_optimizer=build.optimizer_factory(cfg),
        clip_val=cfg.trainer.get("gradient_clip_val"),
        clip_algorithm=cfg.trainer.get("gradient_clip_algorithm") or "norm",
        unbounded_loss=cfg.loss.name == "sum_diff",
    )
    return step, record, precisions


def loaded(module: ResNetClassifier, state_dict: dict[str, Tensor]) -> ResNetClassifier:
    """`module` holding `state_dict` at the checkpoint's own precision: 64-true's weights past
    float32's range were inf in a float32 module, and replay found a divergence the run never
    had. (Half weights go into float32 exactly.)"""
    if any(t.dtype == torch.float64 for t in state_dict.values()):
        module = module.double()
    module.load_state_dict(state_dict)
    return module


def ran_on_gpu(run_dir: Path, cfg: Any) -> bool:
    """Whether the run trained on a GPU: its accelerator, or for auto, the GPUs its run.json saw."""
    accelerator = str(cfg.device.accelerator)
    if accelerator != "auto":
        return accelerator in ("gpu", "cuda")
    try:
        return int(json.loads((run_dir / RUN_JSON).read_text())["gpus"]["count"]) > 0
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no record: as on this CPU


def verdict(
    found: dict[str, Finding | None], unbounded_loss: bool = False, first_step: bool = False
) -> str:
    """The last line: float64 overflows too (a true divergence; at the first step, before any
    update, the initial weights'), or which precisions alone went non-finite (for the seed's
    loss after the first step, float64 only postpones it), or none did. The seed's loss is named
    only where it is the run's, and not at step 0, where no update has driven it yet."""
    bad = [name for name, finding in found.items() if finding is not None]
    seed_loss = unbounded_loss and not first_step
    if FLOAT64.name in bad:
        too = " too" if len(bad) > 1 else ""
        if first_step:
            return (f"float64 overflows{too} at the first step, before any update: the initial "
                    "weights make it (model.weights)")  # fmt: skip
        return f"float64 overflows{too}: a true divergence" + (
            ", as the seed's unbounded loss" if seed_loss else ""
        )
    if bad:
        later = "; float64's range only postpones the seed's unbounded loss" if seed_loss else ""
        return f"float64 stays finite at this step: only {' and '.join(bad)} went non-finite{later}"
    return "did not reproduce: every precision stays finite through the step and the next forward"


USAGE = "usage: python -m pipeline.replay <run dir>"
FINITE = "finite through the step and the next forward"


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m pipeline.replay` and `pipeline-replay` (entry_points.replay)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["-h"], ["--help"]):  # not a run directory of that name
        print(f"{USAGE}\n\n{__doc__}", end="")
        sys.exit(0)
    if len(args) != 1:
        print(USAGE, file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    run_dir = Path(args[0])
    try:
        step, record, precisions = load_step(run_dir)
    except ConfigError as exc:
        print(f"pipeline.replay: {exc.problems[0]}", file=sys.stderr)
        sys.exit(CONFIG_ERROR_EXIT_CODE)
    own = precisions[0]
    print(
        f"pipeline.replay: step {record['step']} of {run_dir} (loss {record['loss']}), samples "
        f"{record['indices']}, from {LAST_CHECKPOINT}, on the CPU"
    )
    if own.autocast is not None:
        half = str(own.autocast).removeprefix("torch.")
        print(f"  ({own.name}: float32 weights, the forward under autocast in {half})")
    found = {p.name: replay(step, p) for p in precisions}
    for name, finding in found.items():
        print(f"  {name}: {finding or FINITE}")
    print(f"  {verdict(found, step.unbounded_loss, first_step=record['step'] == 0)}")
    sys.exit(0 if any(f is not None for f in found.values()) else NOT_REPRODUCED_EXIT_CODE)


if __name__ == "__main__":
    main()

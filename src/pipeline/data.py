"""Synthetic images, uniform in [0, 1) like the seed's torch.rand, as a LightningDataModule.

The DataLoader carries sample indices only; after a batch of indices reaches the run's device,
`make_batch` makes its images and labels there in one vectorised call. Every value is a
counter-based hash of (seed, split, sample index, element position) in exact integer arithmetic:
a sample is bitwise the same on a CPU and on CUDA, alone or inside any batch, on any rank, with
any number of workers, in any order. No image bytes are made on the host or copied to the device.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from pipeline import sample_hash
from pipeline.errors import ConfigError, is_out_of_memory
from pipeline.losses import LabelKind
from pipeline.sample_hash import (
    SPLITS,
    CompileMode,
    compiles,
    failure_reason,
    fused_batch,
    missing_cpu_compiler,
    mix32,
    sample_keys,
    uniform,
    values,
)

__all__ = ["SPLITS", "IndexBatch", "SyntheticDataModule", "make_batch", "mix32"]
log = logging.getLogger(__name__)

# Lightning suggests more DataLoader workers on a machine with more than 2 cores; these loaders
# yield index tensors only, so a worker would have nothing to do.
warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")


def make_batch(
    indices: Tensor,
    *,
    seed: int,
    split: str,
    image_size: int,
    channels: int,
    num_classes: int,
    label_kind: LabelKind,
    device: torch.device | str,
    compiled: bool = False,
) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) float32 uniform in [0, 1) and labels of samples `indices` (1-D int64),
    made on `device`. Labels are the elements after the image: (N, num_classes) uniform floats
    for label_kind "dense", (N,) class ids for "index". Pure: equal arguments give bitwise
    equal tensors on any device, compiled or not.
    Cost: eager, ~12 elementwise int32 passes in place over N·C·H·W values (on CUDA one kernel
    each, with two int32 buffers of that size, ~0.3 GB at batch 256 of 3×224×224; on a CPU in
    cache-sized blocks); `compiled`, one kernel writing the float32 images (sample_hash.fused_batch: the
    first call in a process compiles). Figures: docs/benchmarks.md."""
    indices = indices.to(device=device, dtype=torch.int64)
    numel = channels * image_size * image_size
    if compiled:
        images, labels = fused_batch(indices, seed, split, numel, num_classes,
                                     dense_labels=label_kind == "dense")  # fmt: skip
        return images.view(-1, channels, image_size, image_size), labels
    keys = sample_keys(indices, seed, split)  # (N,)
    images = uniform(keys, 0, numel).view(-1, channels, image_size, image_size)
    if label_kind == "dense":
        labels = uniform(keys, numel, num_classes)
    else:  # a class id: the top of value·num_classes, so each class has ~2**32/num_classes values
        labels = (values(keys, numel, 1)[:, 0] * num_classes) >> 32
    return images, labels


class IndexBatch(NamedTuple):
    """What the DataLoader yields: a batch of sample indices (B,) int64, and their split."""

    indices: Tensor
    split: str


class CollateIndices:
    """A DataLoader's collate_fn: sample indices → IndexBatch. A class, so workers can pickle it."""

    def __init__(self, split: str) -> None:
        self.split = split

    def __call__(self, indices: list[int]) -> IndexBatch:
        return IndexBatch(torch.tensor(indices, dtype=torch.int64), self.split)


class SkipBatchSampler(BatchSampler):
    """A BatchSampler whose first pass starts `skip` batches in, without loading the skipped
    ones: how a run resumed mid-epoch sees exactly the batches it had not trained on yet.
    Its length stays the full epoch's, which is what Lightning counts batch indices against."""

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool, skip: int = 0) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = self.skip, 0  # only the first pass after a resume
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


def freeze_inherited_objects(worker_id: int) -> None:
    """A DataLoader worker is a fork of the training process. Garbage it inherited (an earlier
    run's model in a Hydra sweep or the bench, kept in reference cycles until collected) would
    be collected in the worker, and freeing a CUDA tensor in a forked process aborts it ("CUDA
    error: initialization error"; seen on an H200). Frozen, the worker's collector never visits
    what the worker inherited."""
    gc.freeze()


class SyntheticDataModule(pl.LightningDataModule):
    """Train and val splits of synthetic samples. The loaders yield IndexBatch in index order
    (the samples are already independent, and a fixed order makes resumes and rank splits
    exact); `on_after_batch_transfer` turns each into (images, labels) on the run's device. Its
    state in a checkpoint is how far into the epoch training got, so a resumed run continues there."""

    def __init__(
        self,
        *,
        image_size: int,
        channels: int,
        batch_size: int,
        num_samples: int,
        num_val_samples: int,
        num_workers: int,
        num_classes: int,
        label_kind: LabelKind,
        seed: int,
        compile: CompileMode,
    ) -> None:
        super().__init__()
        self.compile: CompileMode = compile
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_samples = {"train": num_samples, "val": num_val_samples}
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.label_kind: LabelKind = label_kind
        self.seed = seed
        self._resume_skip_batches = 0
        self.last_train_indices: Tensor | None = None  # (B,) of the latest training batch

    def samples(self, indices: Tensor, split: str, device: torch.device) -> tuple[Tensor, Tensor]:
        """make_batch with this module's seed and shapes, compiled as data.compile says. Where
        torch.compile cannot build the kernel, auto warns once a process and makes the same
        samples eagerly from then on; true stops the run (ConfigError)."""
        compiled = self.compiles(device)
        first = compiled and not sample_hash.compiled_once
        if first:
            log.info("data.compile: compiling the sample kernel (once a process: 15-30 s on a "
                     "CPU when inductor's cache is cold, a few seconds from it)")  # fmt: skip
        start = time.perf_counter()
        # Without a C++ compiler a CPU compile fails only after ~20 s of code generation.
        missing = missing_cpu_compiler() if first and device.type == "cpu" else None
        if missing:
            return self._eagerly_instead(missing, indices, split, device)
        try:
            made = self.make(indices, split, device, compiled)
        except Exception as exc:
            if not compiled or is_out_of_memory(exc):
                raise
            return self._eagerly_instead(failure_reason(exc), indices, split, device, exc)
        if first:
            sample_hash.compiled_once = True
            log.info("data.compile: compiled in %.1f s", time.perf_counter() - start)
        return made

    def _eagerly_instead(
        self,
        reason: str,
        indices: Tensor,
        split: str,
        device: torch.device,
        cause: Exception | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The kernel cannot be built here (`reason`): data.compile=true stops the run with a
        ConfigError; auto warns, stays eager for the rest of the process, and makes these."""
        if self.compile is True:
            raise ConfigError([
                f"data.compile=true: torch.compile could not build the sample kernel on "
                f"{device.type} here ({reason}); set data.compile=false (the same samples, "
                "made eagerly)"
            ]) from cause  # fmt: skip
        log.warning("data.compile=auto: torch.compile could not build the sample kernel "
                    "(%s); making the same samples eagerly", reason)  # fmt: skip
        sample_hash.compile_failed = True
        return self.make(indices, split, device, compiled=False)

    def compiles(self, device: torch.device) -> bool:
        """Whether this module makes samples on `device` with the compiled kernel."""
        if self.compile == "auto" and sample_hash.compile_failed:
            return False  # it failed earlier in this process: no second try, no second warning
        return compiles(self.compile, device, self.image_size)

    def make(
        self, indices: Tensor, split: str, device: torch.device, compiled: bool
    ) -> tuple[Tensor, Tensor]:
        """make_batch with this module's seed and shapes, compiled or not as asked."""
        return make_batch(indices, seed=self.seed, split=split, image_size=self.image_size,
                          channels=self.channels, num_classes=self.num_classes,
                          label_kind=self.label_kind, device=device, compiled=compiled)  # fmt: skip

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Lightning's hook, after a batch reached the device: an IndexBatch's images and labels,
        in the run's precision (Lightning converted the batch before the transfer, when it held
        indices only: 64-true wants float64 images, 16-true and bf16-true half ones). Anything
        else passes as it is (Lightning sends the model's example input through here for the
        model summary and TensorBoard's graph)."""
        if not isinstance(batch, IndexBatch):
            return batch
        if batch.split == "train":
            self.last_train_indices = (
                batch.indices
            )  # the non-finite guard names a bad step's samples
        made = self.samples(batch.indices, batch.split, batch.indices.device)
        return made if self.trainer is None else self.trainer.precision_plugin.convert_input(made)

    def _loader(self, split: str, skip: int = 0) -> DataLoader[IndexBatch]:
        indices = range(self.num_samples[split])
        return DataLoader(
            indices,  # type: ignore[arg-type]  # a range is a map-style dataset of its items
            batch_sampler=SkipBatchSampler(
                SequentialSampler(indices), self.batch_size, drop_last=False, skip=skip
            ),
            collate_fn=CollateIndices(split),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=freeze_inherited_objects,
        )

    def train_dataloader(self) -> DataLoader[IndexBatch]:
        skip, self._resume_skip_batches = self._resume_skip_batches, 0
        return self._loader("train", skip)

    def state_dict(self) -> dict[str, Any]:
        """Batches of the current epoch already trained on (0 at an epoch's end)."""
        trainer = self.trainer
        if trainer is None or not trainer.num_training_batches:
            return {"batches_done_in_epoch": 0}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return {"batches_done_in_epoch": int(done % trainer.num_training_batches)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_skip_batches = int(state_dict.get("batches_done_in_epoch", 0))

    def val_dataloader(self) -> DataLoader[IndexBatch]:
        return self._loader("val")

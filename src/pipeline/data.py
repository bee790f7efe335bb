"""Synthetic images, uniform in [0, 1) like the seed's torch.rand, as a LightningDataModule.

The DataLoader carries sample indices only; after a batch of indices reaches the run's device,
`make_batch` makes its images and labels there in one vectorised call. Every value is a
counter-based hash of (seed, split, sample index, element position) in exact integer arithmetic:
a sample is bitwise the same on a CPU and on CUDA, alone or inside any batch, on any rank, with
any number of workers, in any order. No image bytes are made on the host or copied to the device.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple, TypeVar

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from pipeline.losses import LabelKind

SPLITS = ("train", "val")
# Lightning suggests more DataLoader workers on a machine with more than 2 cores; these loaders
# yield index tensors only, so a worker would have nothing to do.
warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
_MASK32 = 0xFFFFFFFF
# A 32-bit integer hash (xorshift-multiply, from Wellons' hash-prospector): both multipliers are
# below 2**31, so x·c < 2**63 for any 32-bit x and int64 never overflows, on any device.
_MUL1, _MUL2 = 0x21F0AAAD, 0x735A2D97
_POSITION_KEY = 0x9E3779B9  # keeps position 0 from hashing the zero word
_UNIT = 2.0**-24  # 24 random bits a value: exact in float32, like torch.rand
# int64 values a block holds on a CPU: 256 KB, within a core's L2, and at torch's grain size
# (32,768), so each pass runs on the calling thread, with no wait for the pool's other threads.
CPU_BLOCK_VALUES = 2**15

Word = TypeVar("Word", int, Tensor)


def mix32(x: Word) -> Word:
    """A 32-bit hash of 32-bit words: a Python int, or an int64 tensor, which it overwrites in
    place (the caller passes a tensor of its own) and returns. ~10 elementwise passes."""
    x ^= x >> 16
    x *= _MUL1
    x &= _MASK32
    x ^= x >> 15
    x *= _MUL2
    x &= _MASK32
    x ^= x >> 15
    return x


def stream_key(seed: int, split: str) -> int:
    """The 32-bit key of one split of one seed; every bit of a 64-bit seed counts."""
    key = mix32((seed & _MASK32) ^ _POSITION_KEY)
    key = mix32(key ^ ((seed >> 32) & _MASK32))
    return mix32(key ^ SPLITS.index(split))


def _values(sample_keys: Tensor, first: int, count: int) -> Tensor:
    """Hashes of elements first…first+count−1 of each sample: (N, count) int64 in [0, 2**32)."""
    positions = torch.arange(first, first + count, device=sample_keys.device, dtype=torch.int64)
    position_words = mix32(positions ^ _POSITION_KEY)  # (count,): shared by every sample
    return mix32(sample_keys[:, None] ^ position_words[None, :])  # (N, count)


def _uniform(sample_keys: Tensor, first: int, count: int) -> Tensor:
    """Elements first…first+count−1 of each sample as floats: (N, count) float32 in [0, 1), the
    top 24 bits of each hash. On a CPU in blocks of positions whose int64 temporaries stay in
    cache (over a whole batch at 224×224, every pass went to memory: several times slower
    here); on CUDA in one block."""
    n, device = len(sample_keys), sample_keys.device
    out = torch.empty(n, count, device=device, dtype=torch.float32)
    width = count if device.type != "cpu" else max(1, CPU_BLOCK_VALUES // max(n, 1))
    for start in range(0, count, width):
        block = _values(sample_keys, first + start, min(width, count - start))
        block >>= 8  # below 2**24: exact in float32, as is the product with 2**-24
        torch.mul(block, _UNIT, out=out[:, start : start + block.shape[1]])
    return out


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
) -> tuple[Tensor, Tensor]:
    """Images (N, C, H, W) float32 uniform in [0, 1) and labels of samples `indices` (1-D int64),
    made on `device`. Labels are the elements after the image: (N, num_classes) uniform floats
    for label_kind "dense", (N,) class ids for "index". Pure: equal arguments give bitwise
    equal tensors on any device. Cost: ~14 elementwise int64 passes over N·C·H·W values; on
    CUDA one kernel each, with int64 temporaries of that size (~0.8 GB at batch 256 of
    3×224×224); on a CPU in cache-sized blocks (2–3 ms an image at 224×224 here, about what
    numpy's generator cost: docs/benchmarks.md)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
    indices = indices.to(device=device, dtype=torch.int64)
    sample_keys = mix32((indices & _MASK32) ^ stream_key(seed, split))
    sample_keys = mix32(sample_keys ^ (indices >> 32))  # (N,)
    numel = channels * image_size * image_size
    images = _uniform(sample_keys, 0, numel).view(-1, channels, image_size, image_size)
    if label_kind == "dense":
        labels = _uniform(sample_keys, numel, num_classes)
    else:  # a class id: the top of value·num_classes, so each class has ~2**32/num_classes values
        labels = (_values(sample_keys, numel, 1)[:, 0] * num_classes) >> 32
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
    ) -> None:
        super().__init__()
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
        """make_batch with this module's seed and shapes."""
        return make_batch(indices, seed=self.seed, split=split, image_size=self.image_size,
                          channels=self.channels, num_classes=self.num_classes,
                          label_kind=self.label_kind, device=device)  # fmt: skip

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

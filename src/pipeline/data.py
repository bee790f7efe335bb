"""Synthetic images, uniform in [0, 1) like the seed's torch.rand, as a LightningDataModule.

Each sample is a pure function of (seed, split, index): the same seed gives the same samples
whatever num_workers, the number of processes, or the order they are read in.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

from pipeline.losses import LabelKind

SPLITS = ("train", "val")


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one sample, from (seed, split, index) alone.

    numpy's SeedSequence mixes all three into 128 bits; torch's CPU generator would keep only
    32 bits of a combined seed, so different seeds would repeat the same samples.
    """
    return np.random.Generator(
        np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), index]))
    )


class SyntheticImages(Dataset[tuple[Tensor, Tensor]]):
    """Random images (C, H, W) with random labels: (num_classes,) floats or a class id."""

    def __init__(
        self,
        *,
        num_samples: int,
        image_size: int,
        channels: int,
        num_classes: int,
        label_kind: LabelKind,
        seed: int,
        split: str,
    ) -> None:
        self.num_samples = num_samples
        self.image_size = image_size
        self.channels = channels
        self.num_classes = num_classes
        self.label_kind = label_kind
        self.seed = seed
        self.split = split

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} of {self.num_samples}")
        rng = sample_rng(self.seed, self.split, index)
        shape = (self.channels, self.image_size, self.image_size)
        image = torch.from_numpy(rng.random(shape, dtype=np.float32))  # (C, H, W), uniform [0, 1)
        if self.label_kind == "dense":
            label = torch.from_numpy(
                rng.random(self.num_classes, dtype=np.float32)
            )  # (num_classes,)
        else:
            label = torch.tensor(int(rng.integers(self.num_classes)))  # a class id
        return image, label


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
    """Train and val splits of SyntheticImages. Batches are in index order: the samples are
    already independent, and a fixed order makes resumes and rank splits exact. Its state in a
    checkpoint is how far into the epoch training got, so a resumed run continues there."""

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
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        common = dict(
            image_size=image_size,
            channels=channels,
            num_classes=num_classes,
            label_kind=label_kind,
            seed=seed,
        )
        self.train_set = SyntheticImages(num_samples=num_samples, split="train", **common)  # type: ignore[arg-type]
        self.val_set = SyntheticImages(num_samples=num_val_samples, split="val", **common)  # type: ignore[arg-type]

        self._resume_skip_batches = 0

    def _loader(self, dataset: SyntheticImages, skip: int = 0) -> DataLoader[tuple[Tensor, Tensor]]:
        return DataLoader(
            dataset,
            batch_sampler=SkipBatchSampler(
                SequentialSampler(dataset), self.batch_size, drop_last=False, skip=skip
            ),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=freeze_inherited_objects,
        )

    def train_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        skip, self._resume_skip_batches = self._resume_skip_batches, 0
        return self._loader(self.train_set, skip)

    def state_dict(self) -> dict[str, Any]:
        """Batches of the current epoch already trained on (0 at an epoch's end)."""
        trainer = self.trainer
        if trainer is None or not trainer.num_training_batches:
            return {"batches_done_in_epoch": 0}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        return {"batches_done_in_epoch": int(done % trainer.num_training_batches)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_skip_batches = int(state_dict.get("batches_done_in_epoch", 0))

    def val_dataloader(self) -> DataLoader[tuple[Tensor, Tensor]]:
        return self._loader(self.val_set)

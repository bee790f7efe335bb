"""Synthetic samples are a pure function of (seed, split, index)."""

from __future__ import annotations

import torch

from pipeline.data import SyntheticDataModule, SyntheticImages


def _module(num_workers: int, label_kind: str = "dense") -> SyntheticDataModule:
    return SyntheticDataModule(
        image_size=16,
        channels=3,
        batch_size=4,
        num_samples=12,
        num_val_samples=4,
        num_workers=num_workers,
        num_classes=10,
        label_kind=label_kind,
        seed=7,  # type: ignore[arg-type]
    )


def test_same_samples_with_0_and_2_workers() -> None:
    batches = {}
    for workers in (0, 2):
        batches[workers] = list(_module(workers).train_dataloader())
    assert len(batches[0]) == len(batches[2]) == 3
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)


def test_samples_depend_on_seed_split_and_index_only() -> None:
    kw = dict(num_samples=5, image_size=8, channels=3, num_classes=4, label_kind="index")
    a = SyntheticImages(seed=1, split="train", **kw)  # type: ignore[arg-type]
    assert torch.equal(a[3][0], SyntheticImages(seed=1, split="train", **kw)[3][0])  # type: ignore[arg-type]
    assert not torch.equal(a[3][0], a[2][0])
    assert not torch.equal(a[3][0], SyntheticImages(seed=2, split="train", **kw)[3][0])  # type: ignore[arg-type]
    assert not torch.equal(a[3][0], SyntheticImages(seed=1, split="val", **kw)[3][0])  # type: ignore[arg-type]
    assert not torch.equal(a[3][0], SyntheticImages(seed=1 + 2**32, split="train", **kw)[3][0])  # type: ignore[arg-type]
    image, label = a[0]
    assert image.shape == (3, 8, 8) and image.min() >= 0 and image.max() < 1
    assert label.dtype == torch.int64 and 0 <= int(label) < 4


def test_dense_labels_are_uniform_vectors() -> None:
    _image, label = _module(0).train_set[0]
    assert (
        label.shape == (10,)
        and label.dtype == torch.float32
        and label.min() >= 0
        and label.max() < 1
    )


class _FreezeCount(torch.utils.data.Dataset[int]):
    """Each item: how many objects the worker process's garbage collector leaves alone."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        import gc

        return gc.get_freeze_count()


def test_workers_never_collect_what_they_inherited() -> None:
    # A forked worker that collects inherited garbage holding a CUDA tensor aborts; the
    # pipeline's loaders freeze the inherited objects when a worker starts.
    from torch.utils.data import DataLoader

    from pipeline.data import freeze_inherited_objects

    loader = _module(1).train_dataloader()
    assert loader.worker_init_fn is freeze_inherited_objects
    counts = DataLoader(_FreezeCount(), num_workers=1, worker_init_fn=loader.worker_init_fn)
    unfrozen = DataLoader(_FreezeCount(), num_workers=1)
    assert all(int(c) > 1000 for c in counts) and all(int(c) == 0 for c in unfrozen)

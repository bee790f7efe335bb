"""Synthetic samples are a pure function of (seed, split, index), made on the run's device."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from pipeline.data import IndexBatch, SyntheticDataModule, make_batch, mix32

SHAPE = dict(image_size=8, channels=3, num_classes=10)


def _make(indices: list[int], **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    args = dict(seed=7, split="train", label_kind="dense", device="cpu", **SHAPE) | kw
    return make_batch(torch.tensor(indices), **args)  # type: ignore[arg-type]


def _module(num_workers: int = 0, label_kind: str = "dense") -> SyntheticDataModule:
    return SyntheticDataModule(
        image_size=16,
        channels=3,
        batch_size=4,
        num_samples=12,
        num_val_samples=4,
        num_workers=num_workers,
        num_classes=10,
        label_kind=label_kind,  # type: ignore[arg-type]
        seed=7,
        compile=False,
    )


@pytest.mark.parametrize("label_kind", ["dense", "index"])
def test_a_sample_alone_equals_it_inside_any_batch_in_any_order(label_kind: str) -> None:
    images, labels = _make(list(range(8)), label_kind=label_kind)
    alone_images, alone_labels = _make([5], label_kind=label_kind)
    assert torch.equal(alone_images[0], images[5]) and torch.equal(alone_labels[0], labels[5])
    shuffled_images, shuffled_labels = _make([6, 5, 0, 3], label_kind=label_kind)
    assert torch.equal(shuffled_images, images[[6, 5, 0, 3]])
    assert torch.equal(shuffled_labels, labels[[6, 5, 0, 3]])
    # A CPU makes a big batch in blocks of positions (here 6 of 512), a lone sample in one.
    big, _ = _make(list(range(64)), label_kind=label_kind, image_size=32)
    assert torch.equal(big[40], _make([40], label_kind=label_kind, image_size=32)[0][0])


def test_values_are_uniform_24_bit_floats_in_0_1() -> None:
    images, labels = _make(list(range(64)), image_size=32)  # 196,608 values
    assert images.shape == (64, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() < 1
    assert torch.equal(images * 2**24, (images * 2**24).floor())  # 24 random bits each
    # Six standard errors: ±0.0039 on the mean (σ/√n), ±0.0010 on the variance.
    assert abs(images.double().mean().item() - 1 / 2) < 0.004
    assert abs(images.double().var().item() - 1 / 12) < 0.001
    assert labels.shape == (64, 10) and labels.min() >= 0 and labels.max() < 1


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]).double())[0, 1].item()


def test_neighbouring_pixels_channels_and_samples_are_uncorrelated() -> None:
    images, _ = _make(list(range(64)), image_size=32)
    # ~65,000 pairs each: the standard error of a correlation is ~0.004; 0.025 is six of them.
    assert abs(_correlation(images[..., :-1], images[..., 1:])) < 0.025  # left / right
    assert abs(_correlation(images[..., :-1, :], images[..., 1:, :])) < 0.025  # up / down
    assert abs(_correlation(images[:, :-1], images[:, 1:])) < 0.025  # channel / next channel
    assert abs(_correlation(images[:-1], images[1:])) < 0.025  # sample / next sample


def test_seeds_splits_and_indices_give_different_samples() -> None:
    (image,), _ = _make([3])
    assert torch.equal(image, _make([3])[0][0])
    for other in (
        _make([2]),
        _make([3], seed=8),
        _make([3], seed=7 + 2**32),
        _make([3], split="val"),
    ):
        assert (other[0][0] != image).float().mean() > 0.99  # nearly every value differs


def test_class_ids_cover_every_class() -> None:
    _, labels = _make(list(range(400)), label_kind="index")
    assert labels.shape == (400,) and labels.dtype == torch.int64
    assert sorted(labels.unique().tolist()) == list(range(10))


def test_the_hash_is_one_function_on_ints_and_tensors_and_stays_stable() -> None:
    words = [0, 1, 2**31, 2**32 - 1, 0x12345678]
    assert mix32(torch.tensor(words)).tolist() == [mix32(w) for w in words]
    # Pinned: a change here changes every user's samples.
    first_values = _make([0], image_size=2)[0].flatten()[:3] * 2**24
    assert first_values.long().tolist() == [563510, 7983265, 3616589]


def test_the_loader_carries_indices_and_the_hook_makes_samples_with_any_workers() -> None:
    module = _module()
    (first, *_rest) = list(module.train_dataloader())
    assert isinstance(first, IndexBatch) and first.split == "train"
    assert first.indices.tolist() == [0, 1, 2, 3]
    images, labels = module.on_after_batch_transfer(first, 0)
    expected = make_batch(torch.arange(4), seed=7, split="train", image_size=16, channels=3,
                          num_classes=10, label_kind="dense", device="cpu")  # fmt: skip
    assert torch.equal(images, expected[0]) and torch.equal(labels, expected[1])
    example_input = torch.zeros(1, 3, 16, 16)  # Lightning's, for the summary and the graph
    assert module.on_after_batch_transfer(example_input, 0) is example_input
    (val,) = list(module.val_dataloader())
    assert val.split == "val"
    with_workers = [b.indices.tolist() for b in _module(num_workers=2).train_dataloader()]
    assert with_workers == [b.indices.tolist() for b in module.train_dataloader()]


def test_ddp_ranks_get_disjoint_samples_and_a_resume_skips_what_was_trained() -> None:
    """Lightning rebuilds the loader around a DistributedSampler for each rank; the rebuilt
    loaders keep the skip of a resumed run and split the indices between ranks."""
    from lightning.fabric.utilities.data import _replace_dunder_methods
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader
    from torch.utils.data import BatchSampler, DataLoader

    module = _module()
    module.load_state_dict({"batches_done_in_epoch": 1})
    # As Lightning asks for a loader: recording the arguments it rebuilds the loader from.
    with _replace_dunder_methods(DataLoader, "dataset"), _replace_dunder_methods(BatchSampler):
        loader = module.train_dataloader()
    seen = []
    for rank in (0, 1):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=False)
        ranked = _update_dataloader(loader, sampler, mode=RunningStage.TRAINING)
        seen.append([i for batch in ranked for i in batch.indices.tolist()])
    assert seen == [[8, 10], [9, 11]]  # each rank's first batch (4 of its 6) was trained on
    assert [b.indices.tolist() for b in module.train_dataloader()] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("label_kind", ["dense", "index"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_cuda_makes_the_same_samples_as_the_cpu_bitwise(label_kind: str, compiled: bool) -> None:
    indices = [0, 1, 2**31 + 5, 7, 2**40]
    on_cpu = _make(indices, image_size=224, label_kind=label_kind)
    on_cuda = _make(
        indices, image_size=224, label_kind=label_kind, device="cuda", compiled=compiled
    )
    assert on_cuda[0].device.type == "cuda"
    assert torch.equal(on_cuda[0].cpu(), on_cpu[0]) and torch.equal(on_cuda[1].cpu(), on_cpu[1])


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

"""The compiled sample kernel makes the eager hash's samples bitwise, and data.compile picks it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from pipeline import sample_hash
from pipeline.data import SyntheticDataModule, make_batch
from pipeline.errors import ConfigError


def _batch(indices: list[int], compiled: bool, **kw: object) -> tuple[torch.Tensor, torch.Tensor]:
    args = dict(seed=7, split="train", image_size=16, channels=3, num_classes=10,
                label_kind="dense", device="cpu") | kw  # fmt: skip
    return make_batch(torch.tensor(indices), compiled=compiled, **args)  # type: ignore[arg-type]


# Indices whose words cross the int32 sign bit and the 32-bit boundary of the index.
EDGE_INDICES = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 3, 2**62 + 11]


@pytest.mark.parametrize(
    ("seed", "split", "image_size", "label_kind"),
    [
        (7, "train", 16, "dense"),
        (2**63 - 1, "val", 7, "dense"),  # odd sizes: no multiple of a vector width
        (0, "train", 33, "index"),
    ],
)
def test_the_compiled_kernel_makes_the_eager_samples_bitwise(
    seed: int, split: str, image_size: int, label_kind: str
) -> None:
    kw = dict(seed=seed, split=split, image_size=image_size, label_kind=label_kind)
    eager = _batch(EDGE_INDICES, compiled=False, **kw)
    compiled = _batch(EDGE_INDICES, compiled=True, **kw)
    assert torch.equal(compiled[0], eager[0]) and torch.equal(compiled[1], eager[1])
    alone = _batch([2**32], compiled=True, **kw)  # another batch size: no second compile needed
    assert torch.equal(alone[0][0], eager[0][5])


def test_the_eager_int32_hash_is_the_int64_definition_in_every_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uniform wraps int32 multiplies, in place, block by block: the same bits as the exact int64
    hash (`values`), for keys across the int32 sign bit and blocks that do not divide the count."""
    blocks_of_7_positions = 7 * len(EDGE_INDICES)
    monkeypatch.setattr(sample_hash, "CPU_BLOCK_VALUES", blocks_of_7_positions)
    keys = sample_hash.sample_keys(torch.tensor(EDGE_INDICES), 2**63 - 1, "val")
    assert (keys >= 2**31).any() and (keys < 2**31).any()
    for first, count in ((0, 3 * 5 * 5), (3 * 224 * 224, 1000), (2**31 - 9, 9)):
        made = sample_hash.uniform(keys, first, count)
        exact = (sample_hash.values(keys, first, count) >> 8).to(torch.float64) * 2.0**-24
        assert made.dtype == torch.float32 and torch.equal(made.double(), exact)


def test_the_compiled_kernel_compiles_once_for_every_shape() -> None:
    from torch._dynamo.utils import counters

    _batch([1, 2], compiled=True)  # compiled here or by an earlier test
    before = counters["stats"]["unique_graphs"]
    for n, size in ((3, 16), (5, 9), (1, 40)):
        _batch(list(range(n)), compiled=True, image_size=size)
    with torch.inference_mode():  # how Lightning validates
        _batch([4], compiled=True, split="val")
    assert counters["stats"]["unique_graphs"] == before


def test_a_first_batch_as_long_as_the_labels_or_the_image_leaves_one_graph() -> None:
    """A first batch of 10 with 10 dense labels compiled a second graph for every other batch
    size: the compiler took the two equal sizes for one ("duck sizing")."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # this process's graphs gone: the next call compiles first
    before = counters["stats"]["unique_graphs"]
    for n in (10, 2, 7, 1, 3 * 4 * 4, 33, 10):
        _batch(list(range(n)), compiled=True, image_size=4, num_classes=10)
    assert counters["stats"]["unique_graphs"] == before + 1


def test_auto_compiles_on_cuda_and_for_big_images_on_a_cpu() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    big = sample_hash.CPU_COMPILE_MIN_IMAGE_SIZE
    assert sample_hash.compiles("auto", cuda, 32)
    assert sample_hash.compiles("auto", cpu, big) and not sample_hash.compiles("auto", cpu, big - 1)
    assert sample_hash.compiles(True, cpu, 8) and not sample_hash.compiles(False, cuda, 224)


def _module(compile: sample_hash.CompileMode) -> SyntheticDataModule:
    return SyntheticDataModule(image_size=16, channels=3, batch_size=4, num_samples=8,
                               num_val_samples=4, num_workers=0, num_classes=10,
                               label_kind="dense", seed=7, compile=compile)  # fmt: skip


@pytest.fixture
def first_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has not compiled the sample kernel yet."""
    monkeypatch.setattr(sample_hash, "_compiled", None)
    monkeypatch.setattr(sample_hash, "compiled_once", False)
    monkeypatch.setattr(sample_hash, "compile_failed", False)


@pytest.fixture
def no_cxx_compiler(first_compile: None) -> Iterator[None]:
    """A machine where inductor finds no C++ compiler (the pipeline asks before compiling)."""
    import torch._inductor.config as inductor

    with inductor.patch({"cpp.cxx": ("/nonexistent/c++",), "force_disable_caches": True}):
        yield


def _fails_to_compile(*args: object) -> None:
    raise RuntimeError("inductor lowered no kernel")


@pytest.mark.parametrize(
    ("machine", "reason"),
    [
        ("no compiler", "InvalidCxxCompiler: No working C++ compiler"),
        ("a failing compile", "RuntimeError: inductor lowered no kernel"),
    ],
)
def test_where_it_cannot_compile_auto_warns_once_and_true_is_a_config_error(
    machine: str,
    reason: str,
    first_compile: None,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found before compiling (no C++ compiler: a compile would fail after ~20 s), or a
    compile that raises: the same warning, or the same config error, naming the reason."""
    if machine == "no compiler":
        request.getfixturevalue("no_cxx_compiler")
    else:
        monkeypatch.setattr(sample_hash, "_compiled", _fails_to_compile)
    module = _module("auto")
    module.image_size = sample_hash.CPU_COMPILE_MIN_IMAGE_SIZE  # where auto compiles on a CPU
    indices = torch.arange(2)
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        first = module.samples(indices, "train", torch.device("cpu"))
        second = module.samples(indices, "train", torch.device("cpu"))
    expected = _batch([0, 1], compiled=False, image_size=sample_hash.CPU_COMPILE_MIN_IMAGE_SIZE)
    assert torch.equal(first[0], expected[0]) and torch.equal(second[0], expected[0])
    warnings = [r.getMessage() for r in caplog.records if "data.compile=auto" in r.getMessage()]
    assert len(warnings) == 1 and "making the same samples eagerly" in warnings[0]
    with pytest.raises(ConfigError) as raised:
        _module(True).samples(indices, "train", torch.device("cpu"))
    (problem,) = raised.value.problems
    assert problem.startswith("data.compile=true: torch.compile could not build the sample kernel "
                              f"on cpu here ({reason}")  # fmt: skip
    assert problem.endswith("set data.compile=false (the same samples, made eagerly)")
    # A second module of the same process (a sweep's next job, the bench) does not try again.
    assert not _module("auto").compiles(torch.device("cpu"))
    assert reason in warnings[0]


def test_data_compile_is_auto_true_or_false_and_true_needs_a_compiler_on_a_cpu() -> None:
    import torch._inductor.config as inductor

    from pipeline.cli import compose
    from pipeline.config import validate

    for bad in ("1", "0", "null", "yes"):
        problems = validate(compose("train", [f"data.compile={bad}"]))
        assert any(p.startswith("data.compile must be true, false or auto") for p in problems), bad
    assert validate(compose("train", ["data.compile=true"])) == []
    with inductor.patch({"cpp.cxx": ("/nonexistent/c++",)}):
        (problem,) = validate(compose("train", ["data.compile=true"]))
        assert validate(compose("train", ["data.compile=auto"])) == []  # auto falls back
    assert problem.startswith("data.compile=true: torch.compile finds no C++ compiler on this "
                              "machine (InvalidCxxCompiler: ")  # fmt: skip
    assert problem.endswith("install one (g++) or set data.compile=false (the same samples, "
                            "made eagerly)")  # fmt: skip

"""The counter-based hash behind the synthetic samples: element `position` of sample `index` of
one (seed, split) is a pure function of those integers, in exact integer arithmetic, so it is
bitwise the same on any device, alone or inside any batch.

The hash is defined in int64 (`mix32`, `values`: exact, no overflow on any device), and made in
int32 with wrapping multiplies, which keep the same low 32 bits at half the bytes and with the
vector multiply an AVX2 CPU has for 32-bit lanes and lacks for 64-bit ones. Two ways to make a
batch: `uniform` (eager torch, ~12 elementwise int32 passes, in place; on a CPU in cache-sized
blocks) and `fused_batch` (the same, `torch.compile`d into a kernel or two: one write of float32 a
value, reading the position words, one sample's worth, made once a process). Their outputs are
bitwise equal to each other and to the int64 definition (tests/unit/test_sample_hash.py); which
one runs is `data.compile`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

import torch
import torch.fx.experimental._config as fx_config
from torch import Tensor

SPLITS = ("train", "val")
_MASK32 = 0xFFFFFFFF
# A 32-bit integer hash (xorshift-multiply, from Wellons' hash-prospector): both multipliers are
# below 2**31, so x·c < 2**63 for any 32-bit x and int64 never overflows, on any device.
_MUL1, _MUL2 = 0x21F0AAAD, 0x735A2D97
_POSITION_KEY = 0x9E3779B9  # keeps position 0 from hashing the zero word
_UNIT = 2.0**-24  # 24 random bits a value: exact in float32, like torch.rand
# int32 values a block holds on a CPU: 512 KB, half of it within each of two cores' L2 (a pass
# over more than torch's grain size, 32,768, is split between the pool's threads). Measured at
# 64×64 and 224×224, batch 32: 2**16 to 2**18 within the noise, 2**15 up to 2× slower, a whole
# batch at 224×224 (every pass to memory) ~8× slower.
CPU_BLOCK_VALUES = 2**17
# data.compile=auto compiles on a CPU from this image side up: there a batch's ~12 eager passes cost
# more per step than the compile (seconds, once a process) amortizes over a run.
CPU_COMPILE_MIN_IMAGE_SIZE = 128

Word = TypeVar("Word", int, Tensor)
CompileMode = Literal["auto"] | bool


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
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} (got {split!r})")
    key = mix32((seed & _MASK32) ^ _POSITION_KEY)
    key = mix32(key ^ ((seed >> 32) & _MASK32))
    return mix32(key ^ SPLITS.index(split))


def sample_keys(indices: Tensor, seed: int, split: str) -> Tensor:
    """The 32-bit key of each sample, (N,) int64 in [0, 2**32), from (N,) int64 indices; every
    bit of a 64-bit index counts."""
    return _keys(indices, stream_key(seed, split))


def _keys(indices: Tensor, stream: int | Tensor) -> Tensor:
    """`sample_keys` from the stream's key (an int, or a 0-dim tensor inside a compiled graph)."""
    keys = mix32((indices & _MASK32) ^ stream)
    return mix32(keys ^ (indices >> 32))


def values(keys: Tensor, first: int, count: int) -> Tensor:
    """Hashes of elements first…first+count−1 of each sample: (N, count) int64 in [0, 2**32)."""
    positions = torch.arange(first, first + count, device=keys.device, dtype=torch.int64)
    position_words = mix32(positions ^ _POSITION_KEY)  # (count,): shared by every sample
    return mix32(keys[:, None] ^ position_words[None, :])  # (N, count)


def uniform(keys: Tensor, first: int, count: int) -> Tensor:
    """Elements first…first+count−1 of each sample as floats: (N, count) float32 in [0, 1), the
    top 24 bits of each hash (`values`). Eager, in int32 and in place: on a CPU in blocks of
    positions whose temporaries stay in cache (over a whole batch at 224×224, every pass went to
    memory: several times slower here); on CUDA in one block."""
    n, device = len(keys), keys.device
    keys32 = _as_int32(keys)
    words = _cached_words(first, count, device)  # (count,): shared by every sample
    out = torch.empty(n, count, device=device, dtype=torch.float32)
    width = count if device.type != "cpu" else max(1, CPU_BLOCK_VALUES // max(n, 1))
    scratch = torch.empty(n, min(width, count), device=device, dtype=torch.int32)
    for start in range(0, count, width):
        stop = min(start + width, count)
        block = keys32[:, None] ^ words[None, start:stop]  # (N, stop − start), a new tensor
        _mix32_wrapping(block, scratch=scratch[:, : stop - start])
        block >>= 8  # the top 24 bits (arithmetic shift: the mask clears the sign's copies)
        block &= 0xFFFFFF  # below 2**24: exact in float32, as is the product with 2**-24
        torch.mul(block, _UNIT, out=out[:, start:stop])
    return out


def _signed32(word: int) -> int:
    """A 32-bit word as the int32 with the same bits."""
    return word - (1 << 32) if word >= 1 << 31 else word


# mix32's three xorshifts, each followed by a multiply (but the last), on int32 words: a right
# shift by `shift` masked to act on the unsigned word.
_XORSHIFTS = ((16, 0xFFFF, _signed32(_MUL1)), (15, 0x1FFFF, _signed32(_MUL2)), (15, 0x1FFFF, None))


def _mix32_wrapping(x: Tensor, scratch: Tensor | None = None) -> Tensor:
    """mix32 on int32 tensors: multiplies wrap modulo 2**32 (as in C, CUDA and Triton), so the
    result is bitwise the int64 mix32's low 32 bits. Functional (what torch.compile fuses), or
    with `scratch` (int32, x's shape) in place in x, allocating nothing (eager)."""
    for shift, mask, multiplier in _XORSHIFTS:
        if scratch is None:
            x = x ^ ((x >> shift) & mask)
            x = x if multiplier is None else x * multiplier
        else:
            torch.bitwise_right_shift(x, shift, out=scratch)
            scratch &= mask
            x ^= scratch
            if multiplier is not None:
                x *= multiplier
    return x


def _as_int32(keys: Tensor) -> Tensor:
    """32-bit words held in int64 ([0, 2**32)) as the int32 values with the same bits."""
    return (keys - ((keys >> 31) << 32)).to(torch.int32)


def _position_words(first: int, count: int, device: torch.device) -> Tensor:
    """mix32 of positions first…first+count−1 (with the position key), int32: (count,)."""
    positions = torch.arange(first, first + count, device=device, dtype=torch.int32)
    return _mix32_wrapping(positions ^ _signed32(_POSITION_KEY))


def _uniform_from_words(keys32: Tensor, words: Tensor) -> Tensor:
    """`uniform` from the samples' int32 keys (N,) and the position words (count,): their hashes'
    top 24 bits as float32 in [0, 1), (N, count)."""
    hashes = _mix32_wrapping(keys32[:, None] ^ words[None, :])
    return ((hashes >> 8) & 0xFFFFFF).to(torch.float32) * _UNIT


def _batch_int32(
    indices: Tensor,
    stream: Tensor,
    image_words: Tensor,
    label_words: Tensor,
    num_classes: int,
    dense_labels: bool,
) -> tuple[Tensor, Tensor]:
    """A whole batch, written for torch.compile to fuse: the keys (int64, as `sample_keys`; N
    values), the images (N, numel) float32 and the labels, as make_batch makes them, from the
    position words of the images' elements (numel,) and of the labels' (num_classes, or one for
    class ids). The words are an input, made once a process (`_cached_words`): hashed inside the
    kernel, every sample hashed them again, two hashes a value where one is the sample's own."""
    keys32 = _as_int32(_keys(indices, stream))
    images = _uniform_from_words(keys32, image_words)
    if dense_labels:
        return images, _uniform_from_words(keys32, label_words)
    word = _mix32_wrapping(keys32 ^ label_words[0]).to(torch.int64) & _MASK32  # unsigned again
    return images, (word * num_classes) >> 32


_compiled: Callable[..., tuple[Tensor, Tensor]] | None = None
compiled_once = False  # this process has built the kernel (data.SyntheticDataModule logs it)
compile_failed = False  # this process could not: data.compile=auto stays eager from then on
_streams: dict[tuple[int, str, torch.device], Tensor] = {}
_words: dict[tuple[int, int, torch.device], Tensor] = {}


def _cached_words(first: int, count: int, device: torch.device) -> Tensor:
    """`_position_words`, made once a process for each (first, count, device): 4 bytes a value
    of one sample (588 KB at 3×224×224)."""
    key = (first, count, device)
    if key not in _words:
        with torch.inference_mode(False):  # a plain tensor, also when validation makes it first
            _words[key] = _position_words(first, count, device)
    return _words[key]


def fused_batch(
    indices: Tensor, seed: int, split: str, numel: int, num_classes: int, dense_labels: bool
) -> tuple[Tensor, Tensor]:
    """make_batch's (images (N, numel), labels) from (N,) int64 indices on their device, bitwise
    as the eager hash makes them, in one compiled call (a kernel or two). The first call in a
    process compiles (seconds; inductor's cache on disk makes later processes quicker); shapes
    are dynamic, so other batch and image sizes, and training and validation, run the same
    kernels. Raises what torch.compile raises when it cannot build them here (e.g. no C++
    compiler for a CPU)."""
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_batch_int32, dynamic=True, fullgraph=True)
    key = (seed, split, indices.device)
    # Plain tensors, also under validation's inference mode (an inference tensor would be a
    # second graph); a lone sample goes twice (a batch of 1 would be a graph of its own). No
    # duck sizing: a first batch as long as the label words (batch 10 of 10 dense labels) made
    # the compiler assume the two sizes equal for good, and every other batch size a 2nd graph.
    no_duck_sizing = fx_config.patch(use_duck_shape=False)  # type: ignore[attr-defined]  # made at import
    with torch.inference_mode(False), torch.no_grad(), no_duck_sizing:
        if key not in _streams:  # made once: a tensor made each call is a copy to the device
            _streams[key] = torch.tensor(stream_key(seed, split), device=indices.device)
        lone = len(indices) == 1
        image_words = _cached_words(0, numel, indices.device)
        label_words = _cached_words(numel, num_classes if dense_labels else 1, indices.device)
        images, labels = _compiled(indices.repeat(2) if lone else indices.clone(), _streams[key],
                                   image_words, label_words, num_classes, dense_labels)  # fmt: skip
    return (images[:1], labels[:1]) if lone else (images, labels)


def missing_cpu_compiler() -> str | None:
    """Why torch.compile cannot build CPU kernels here (no working C++ compiler), or None."""
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # InvalidCxxCompiler, or the like
        return failure_reason(exc)
    return None


def failure_reason(exc: BaseException) -> str:
    """The cause of a failed compile, in one line: torch.compile wraps it (BackendCompilerFailed)
    in a message whose last lines are hints about logging."""
    inner = getattr(exc, "inner_exception", None) or exc
    first = (str(inner).strip().splitlines() or [""])[0]
    return f"{type(inner).__name__}: {first}"[:300]


def compiles(mode: CompileMode, device: torch.device, image_size: int) -> bool:
    """Whether data.compile=`mode` makes samples with `fused_batch` on `device`: auto on CUDA,
    and on a CPU for images of CPU_COMPILE_MIN_IMAGE_SIZE and up (smaller ones cost a CPU step
    little, and a short run would spend more on compiling)."""
    if mode != "auto":
        return bool(mode)
    return device.type == "cuda" or image_size >= CPU_COMPILE_MIN_IMAGE_SIZE

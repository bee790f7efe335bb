"""Whether a run trains on CUDA: the one place the pipeline decides it, from device.accelerator
(validation, the build, the bench and the messages all ask here)."""

from __future__ import annotations

from pathlib import Path

CUDA_ACCELERATORS = ("gpu", "cuda")  # Lightning's names for CUDA


def is_cuda_run(accelerator: str, cuda_available: bool) -> bool:
    """Whether `accelerator` resolves to CUDA: gpu (or cuda) always, auto where torch sees a GPU
    (`cuda_available`: torch.cuda.is_available(), or a test's stand-in)."""
    return accelerator in CUDA_ACCELERATORS or (accelerator == "auto" and cuda_available)


def is_cpu_run(accelerator: str, cuda_available: bool) -> bool:
    """Whether `accelerator` resolves to the CPU: cpu always, auto where torch sees no GPU."""
    return accelerator in ("cpu", "auto") and not is_cuda_run(accelerator, cuda_available)


def cpu_has_native_bf16() -> bool:
    """True where the CPU has bf16 instructions (AVX512-BF16 or AMX); without them bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: do not warn on a guess
    return "avx512_bf16" in flags or "amx_bf16" in flags

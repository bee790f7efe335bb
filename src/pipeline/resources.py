"""What a run needs from the machine, known from the config before anything trains.

ResNet18's shapes are fixed, so the activation memory of a training step and the size of a
checkpoint are functions of the config. The pre-flight compares them with the memory and the
disk the run will have, and refuses what cannot fit in one line instead of an allocation
failure (or a swap storm) minutes later.
"""

from __future__ import annotations

import resource
import shutil
from contextlib import nullcontext
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet18

GIB = 2**30
# Bytes of one saved activation: the lower bound for each precision (mixed precisions keep
# most activations in 16 bits; a few stay in float32, which only makes the real need larger).
ACTIVATION_BYTES = {"64-true": 8, "32-true": 4}
HALF_ACTIVATION_BYTES = 2
# The dtype a run holds its parameters and buffers in (mixed precisions keep them in float32).
PARAMETER_DTYPES = {"64-true": torch.float64, "16-true": torch.float16, "bf16-true": torch.bfloat16}
# Optimizer state kept per parameter (momentum buffers, Adam's two moments): an upper bound.
OPTIMIZER_SLOTS = {"SGD": 1, "Adam": 2, "AdamW": 2, "RMSprop": 2}
CHECKPOINT_OVERHEAD_BYTES = 1 * 2**20  # the pickle's structure, the config, the loops' state


def resnet18_for_images(
    num_classes: int, channels: int = 3, device: torch.device | str | None = None
) -> nn.Module:
    """torchvision's ResNet18, built on `device` (default: the current one), whose stem takes
    images of `channels` channels: for other than 3 a fresh one, initialised as torchvision
    initialises its convolutions."""
    with torch.device(device) if device is not None else nullcontext():
        net = resnet18(num_classes=num_classes)
        if channels != 3:
            net.conv1 = nn.Conv2d(channels, 64, 7, 2, 3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


def resnet18_on_meta(num_classes: int, channels: int = 3) -> nn.Module:
    """ResNet18 built on the meta device: shapes only, no memory, no compute (built on the CPU
    and moved, its random initialisation took 0.2 s of every command's pre-flight); its stem
    takes images of `channels` channels."""
    return resnet18_for_images(num_classes, channels, "meta").eval()


@lru_cache(maxsize=64)
def forward_flops(*, num_classes: int, batch_size: int, channels: int, image_size: int) -> int:
    """FLOPs of ResNet18's forward pass over one batch of that shape, as torch's FlopCounterMode
    counts them (a multiply-add is 2): 3.6 G an image at 224×224. On the meta device, ~50 ms."""
    net = resnet18_on_meta(num_classes, channels)
    with FlopCounterMode(display=False) as counter:
        net(torch.empty(batch_size, channels, image_size, image_size, device="meta"))
    return int(counter.get_total_flops())


@lru_cache(maxsize=64)
def activation_elements_per_image(image_size: int, channels: int) -> int:
    """Values ResNet18's layers output for one image: what autograd keeps for the backward
    pass, a lower bound on a training step's activation memory (measured here: the real peak
    is 1.2–2.4× this figure times the bytes per value)."""
    net = resnet18_on_meta(10, channels)
    total = 0

    def count(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel()

    for module in net.modules():
        if not any(True for _ in module.children()):
            module.register_forward_hook(count)
    with torch.no_grad():
        net(torch.zeros(1, channels, image_size, image_size, device="meta"))
    return total


def activation_bytes(*, image_size: int, channels: int, batch_size: int, precision: str) -> int:
    """Lower bound on the activation memory of one training step of one process."""
    per_value = ACTIVATION_BYTES.get(precision, HALF_ACTIVATION_BYTES)
    return activation_elements_per_image(image_size, channels) * batch_size * per_value


@lru_cache(maxsize=16)
def parameter_count(num_classes: int) -> int:
    """Parameters and buffers of ResNet18 with a `num_classes` head."""
    net = resnet18_on_meta(num_classes)
    return sum(t.numel() for t in (*net.parameters(), *net.buffers()))


def parameter_dtype(precision: str) -> torch.dtype:
    """The dtype a run at `precision` holds its parameters and buffers in."""
    return PARAMETER_DTYPES.get(precision, torch.float32)


def checkpoint_bytes(*, num_classes: int, precision: str, optimizer_target: str) -> int:
    """About the size of last.ckpt: the weights and buffers, and the optimizer's state."""
    name = optimizer_target.rsplit(".", 1)[-1]
    slots = OPTIMIZER_SLOTS.get(name, 2)
    per_value = parameter_dtype(precision).itemsize
    return parameter_count(num_classes) * per_value * (1 + slots) + CHECKPOINT_OVERHEAD_BYTES


def available_memory_bytes() -> int | None:
    """Memory this process can still get on the host: MemAvailable, capped by an address-space
    limit (ulimit -v) if one is set. None where neither can be read."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        available = soft if available is None else min(available, soft)
    return available


def gpu_memory_bytes() -> int:
    """Total memory of the first visible GPU (every process of a node gets one of the same kind)."""
    return int(torch.cuda.get_device_properties(0).total_memory)


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    probe = path.resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def describe(num_bytes: float) -> str:
    """Bytes as GiB (or MiB below one GiB), for messages."""
    return f"{num_bytes / GIB:.1f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.0f} MiB"


def host_processes(*, strategy: str, accelerator: str, devices: int) -> int:
    """Training processes whose activations share this host's memory (DDP on CPUs: all of a
    node's; on GPUs each process keeps its activations on its own GPU)."""
    return max(devices, 1) if strategy == "ddp" and accelerator == "cpu" else 1

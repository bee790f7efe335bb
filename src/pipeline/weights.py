"""Loading ResNet18 weights: torchvision's (downloaded or from the hub cache) or a state-dict file.

Every failure a user can cause (offline, missing file, corrupt file, code-running pickle,
wrong keys) raises ConfigError with the fix, never a urllib or unpickling traceback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights

from pipeline.errors import ConfigError
from pipeline.layout import LAST_CHECKPOINT
from pipeline.resources import parameter_dtype

TORCHVISION_WEIGHTS = (*(w.name for w in ResNet18_Weights), "DEFAULT")
MAX_KEYS_SHOWN = 5


def is_torchvision_weights(weights: str) -> bool:
    """True for 'DEFAULT' and the names of ResNet18_Weights (IMAGENET1K_V1)."""
    return weights in TORCHVISION_WEIGHTS


def hub_cache_file(weights: str) -> Path:
    """Where torch.hub keeps the file: $TORCH_HOME/hub/checkpoints/resnet18-f37072fd.pth."""
    url = ResNet18_Weights[weights].url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def torchvision_state_dict(weights: str) -> dict[str, Tensor]:
    """torchvision's ResNet18 state dict from the hub cache, downloaded into it first if it is
    not there (the hash in its name checked), and read as any weights file is: weights_only,
    so a code-running pickle placed at that path is refused, not run (torch.hub's own loader
    ran it), and a damaged file is one line, not a traceback."""
    cache = hub_cache_file(weights)
    if cache.exists() and not cache.is_file():  # a download would land inside a folder there
        raise ConfigError(
            [
                f"model.weights={weights}: {cache} is there but is not a file; remove it to "
                "download the weights again"
            ]
        )
    if not cache.is_file():
        download(weights, cache)
    try:
        return read_state_dict(str(cache))
    except ConfigError as exc:
        what = exc.problems[0].removeprefix(f"model.weights={cache} ")
        raise ConfigError(
            [f"model.weights={weights}: the cached {cache} {what}; delete it to download it again"]
        ) from None


DOWNLOAD_TIMEOUT_S = 60  # a connection that answers nothing for this long fails the download


def download(weights: str, cache: Path) -> None:
    """torchvision's file into `cache`, its name's hash prefix checked; a network that answers
    nothing fails after DOWNLOAD_TIMEOUT_S (a silent proxy hung the run's check for good)."""
    url = ResNet18_Weights[weights].url
    match = torch.hub.HASH_REGEX.search(os.path.basename(url))
    missing = [d for d in (cache.parent, *cache.parent.parents) if not d.exists()]
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            [
                f"model.weights={weights}: the hub cache folder {cache.parent} cannot be made "
                f"({exc.strerror}); set TORCH_HOME to a writable folder, or model.weights=null"
            ]
        ) from None
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib's reads and connects, this call only
    try:
        torch.hub.download_url_to_file(url, str(cache), match.group(1) if match else None,
                                       progress=False)  # fmt: skip
    except (OSError, RuntimeError) as exc:  # URLError and timeouts are OSErrors; a bad hash
        for folder in missing:  # the folders this call made, innermost first, if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        reason = " ".join(str(getattr(exc, "reason", None) or exc).split())[:200]
        raise ConfigError(
            [
                f"model.weights={weights} could not be downloaded ({reason}); "
                f"place the file at {cache} or set model.weights=null for random init"
            ]
        ) from None
    finally:
        socket.setdefaulttimeout(before)


def load_file(path: str, key: str, *, mmap: bool = False) -> Any:
    """torch.load with weights_only=True: a pickle that would run code is refused, not run.
    `mmap`: the tensors are mapped from the file, read only where touched (a caller after the
    saved config or the shapes reads next to nothing of a checkpoint).

    Any failure (no file, truncated, foreign, unsafe) is a ConfigError naming `key`.
    """
    file = Path(path).expanduser()
    if (file / LAST_CHECKPOINT).is_file():  # a run's folder, given for its checkpoint
        raise ConfigError([
            f"{key}={path} is a run's folder; its checkpoint is {key}={file / LAST_CHECKPOINT}"
        ])  # fmt: skip
    if not file.is_file():
        why = "no such file" if not file.exists() else "a folder"
        raise ConfigError([f"{key}={path} is not a file ({why}); check the path"])
    try:
        # torch maps only its zip format (any torch.save since 1.6; an older file is read whole)
        mapped = mmap and zipfile.is_zipfile(file)
        return torch.load(file, map_location="cpu", weights_only=True, mmap=mapped)
    except PermissionError as exc:
        raise ConfigError(
            [f"{key}={path} cannot be read ({exc.strerror}); check its permissions"]
        ) from None
    except Exception as exc:  # unpickling, zip and pickle-safety errors all land here
        reason = shortened(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
        raise ConfigError(
            [
                f"{key}={path} is not a loadable torch file ({type(exc).__name__}: {reason}); "
                "it may be truncated, foreign, or contain code (refused by weights_only loading)"
            ]
        ) from None


def shortened(text: str, limit: int = 160) -> str:
    """`text` cut at a word boundary before `limit` characters, marked with an ellipsis."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,;:") + " …"


def read_state_dict(path: str) -> dict[str, Tensor]:
    """A state dict from a file: a plain state dict, or a Lightning checkpoint of this package."""
    obj = load_file(path, "model.weights")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):  # a pipeline .ckpt
        obj = {k.removeprefix("net."): v for k, v in obj["state_dict"].items()}
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(
            [
                f"model.weights={path} holds a {type(obj).__name__}, not a state dict of tensors; "
                "save it with torch.save(model.state_dict(), path)"
            ]
        )
    return obj


def _shown(keys: list[str]) -> str:
    more = f" (+{len(keys) - MAX_KEYS_SHOWN} more)" if len(keys) > MAX_KEYS_SHOWN else ""
    return ", ".join(keys[:MAX_KEYS_SHOWN]) + more


def unusable_values(state: dict[str, Tensor], precision: str = "32-true") -> list[tuple[str, bool]]:
    """What of `state`'s values no run at `precision` can start from, a phrase each without the
    file, and whether another precision would take them: inf or NaN; values past the range of
    the dtype the run holds them in (1e300 in a float64 file is inf in float32, 1e6 in float16);
    complex tensors; negative running variances (BatchNorm takes their root)."""
    # The run's dtype, but float32 for 64-true: a model loads its weights in float32 first, so a
    # 64-true run holds 1e300 as inf too.
    dtype = min(parameter_dtype(precision), torch.float32, key=lambda d: d.itemsize)
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    nonfinite = [k for k, v in floats.items() if not torch.isfinite(v).all()]
    past = [
        k for k, v in floats.items() if k not in nonfinite and not torch.isfinite(v.to(dtype)).all()
    ]
    complex_ = [k for k, v in state.items() if v.is_complex()]
    negative = [k for k, v in floats.items() if k.endswith("running_var") and bool((v < 0).any())]
    name = str(dtype).removeprefix("torch.")
    found = [
        (f"holds inf or NaN in {_shown(nonfinite)}", False),
        (f"holds values past {name}'s range in {_shown(past)}", dtype != torch.float32),
        (f"holds complex tensors: {_shown(complex_)}", False),
        (f"holds negative running variances in {_shown(negative)}", False),
    ]
    return [
        entry
        for entry, keys in zip(found, (nonfinite, past, complex_, negative), strict=True)
        if keys
    ]


def state_dict_mismatch(net: nn.Module, state: dict[str, Tensor]) -> list[str]:
    """Missing, unexpected and mis-shaped keys of `state` for `net`; empty when it fits."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_shown(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_shown(unexpected)}")
    if misshaped:
        problems.append(f"mis-shaped keys (file vs model): {_shown(misshaped)}")
    return problems

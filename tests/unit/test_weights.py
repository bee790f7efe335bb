"""Loading weights: torchvision's cache path, state-dict files, and every way a file can be wrong."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from pipeline.config import checkpoint_problems
from pipeline.errors import ConfigError
from pipeline.model import build_resnet18


class Evil:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (str(self.marker),))


def _saved(tmp_path: Path, obj: object, name: str = "w.pt") -> str:
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def test_file_weights_load_and_a_new_head_replaces_the_old(tmp_path: Path) -> None:
    source = resnet18()
    path = _saved(tmp_path, source.state_dict())
    net = build_resnet18(weights=path, num_classes=10)
    assert net.fc.out_features == 10
    assert torch.equal(net.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_mismatched_keys_are_named(tmp_path: Path) -> None:
    state = resnet18().state_dict()
    del state["layer1.0.conv1.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["layer2.0.bn1.bias"] = torch.zeros(3)
    with pytest.raises(ConfigError) as info:
        build_resnet18(weights=_saved(tmp_path, state), num_classes=1000)
    text = "\n".join(info.value.problems)
    assert "missing keys: layer1.0.conv1.weight" in text
    assert "unexpected keys: extra.weight" in text
    assert "mis-shaped keys (file vs model): layer2.0.bn1.bias (3,) vs (128,)" in text


def test_corrupt_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.pt"
    path.write_bytes(os.urandom(512))
    with pytest.raises(ConfigError, match="is not a loadable torch file"):
        build_resnet18(weights=str(path), num_classes=1000)


def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = _saved(tmp_path, {"state_dict": Evil(marker), "global_step": 1}, "evil.ckpt")
    with pytest.raises(ConfigError, match="contain code"):
        build_resnet18(weights=path, num_classes=1000)
    (problem,) = checkpoint_problems(path)
    assert "is not a loadable torch file" in problem
    assert not marker.exists()

"""Loading weights: torchvision's cache path, state-dict files, and every way a file can be wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.errors import ConfigError
from pipeline.model import build_resnet18


def test_default_reads_the_hub_cache(
    fake_hub_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(fake_hub_weights.parents[2]))
    net = build_resnet18(weights="DEFAULT", num_classes=1000)
    expected = torch.load(fake_hub_weights, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())


def test_offline_default_names_the_file_to_place(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # a closed port: offline, at once
    with pytest.raises(ConfigError) as info:
        build_resnet18(weights="DEFAULT", num_classes=1000)
    (line,) = info.value.problems
    assert "model.weights=DEFAULT could not be downloaded" in line
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in line
    assert "model.weights=null" in line

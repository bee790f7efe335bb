"""Loading weights: torchvision's cache path, state-dict files, and every way a file can be wrong."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from pipeline.config import checkpoint_problems
from pipeline.errors import ConfigError
from pipeline.model import build_resnet18
from pipeline.weights import load_file


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


def test_a_weights_files_contents_are_checked_before_a_run_starts(tmp_path: Path) -> None:
    """The pre-flight reads the file: a bad one is a config problem before the run directory is
    made (it was found when the model was built, after the config was printed and the run's
    folder, log and lock were written)."""
    from pipeline.cli import preflight
    from pipeline.config import validate

    def problems(path: Path, *more: str) -> list[str]:
        return preflight("train", [f"model.weights={path}", *more], False, validate)[1]

    (text := tmp_path / "text.pth").write_text("hello")
    torch.save([1, 2, 3], listed := tmp_path / "list.pth")
    torch.save({"a": torch.zeros(2)}, wrong := tmp_path / "wrong.pth")
    torch.save(resnet18(num_classes=10).state_dict(), other_head := tmp_path / "ten.pth")
    assert problems(text)[0].startswith(f"model.weights={text} is not a loadable torch file")
    assert problems(listed) == [
        f"model.weights={listed} holds a list, not a state dict of tensors; "
        "save it with torch.save(model.state_dict(), path)"
    ]
    assert [p.split(": ", 1)[1].split(":")[0] for p in problems(wrong)] == [
        "missing keys",
        "unexpected keys",
    ]
    assert problems(other_head) == []  # a new head replaces a head of another size
    # Values no run can start from: the run stopped in its gradcheck, blaming autograd.
    state = resnet18(num_classes=10).state_dict()
    state["fc.weight"][0, 0], state["bn1.running_var"][1] = math.inf, math.nan
    torch.save(state, broken := tmp_path / "broken.pth")
    assert problems(broken) == [
        f"model.weights={broken} holds inf or NaN in bn1.running_var, fc.weight: no run at "
        "precision=32-true can start from them; use weights saved before they went bad"
    ]
    # Finite as stored but not in float32, complex, a negative variance: each its own line.
    state = {k: v.double() if v.is_floating_point() else v
             for k, v in resnet18(num_classes=10).state_dict().items()}  # fmt: skip
    state["fc.weight"][0, 0], state["bn1.running_var"][0] = 1e300, -1.0
    state["fc.bias"] = state["fc.bias"].to(torch.complex64)
    torch.save(state, odd := tmp_path / "odd.pth")
    assert [
        p.split(": no run")[0].removeprefix(f"model.weights={odd} ") for p in problems(odd)
    ] == [
        "holds values past float32's range in fc.weight",
        "holds complex tensors: fc.bias",
        "holds negative running variances in bn1.running_var",
    ]
    # Finite in float32, past float16's range: a 16-true run holds inf (its gradcheck failed).
    state = resnet18(num_classes=10).state_dict()
    state["fc.weight"][0, 0] = 1e6
    torch.save(state, wide := tmp_path / "wide.pth")
    assert problems(wide) == []
    assert problems(wide, "precision=16-true") == [
        f"model.weights={wide} holds values past float16's range in fc.weight: no run at "
        "precision=16-true can start from them; train at precision=32-true, whose range holds them"
    ]


def test_torchvisions_cached_file_is_read_as_any_weights_file(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the hub cache path: a damaged file was a traceback, a code-running pickle ran (torch
    .hub's loader reads with weights_only=False), non-finite values reached the gradcheck."""
    from pipeline.cli import preflight
    from pipeline.config import validate
    from pipeline.weights import hub_cache_file

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    cache = hub_cache_file("DEFAULT")
    cache.parent.mkdir(parents=True)

    def problems() -> list[str]:
        return preflight("train", ["model.weights=DEFAULT"], False, validate)[1]

    cache.write_bytes(b"garbage")
    (problem,) = problems()
    assert problem.startswith(f"model.weights=DEFAULT: the cached {cache} is not a loadable torch")
    assert problem.endswith("; delete it to download it again"), problem
    torch.save({"x": Evil(marker := torch_home / "ran")}, cache)
    (problem,) = problems()
    assert not marker.exists() and "refused by weights_only loading" in problem
    state = resnet18().state_dict()
    state["fc.bias"][0] = math.nan
    torch.save(state, cache)
    assert problems() == [
        "model.weights=DEFAULT holds inf or NaN in fc.bias: no run at precision=32-true can start "
        f"from them; delete {cache} to download it again"
    ]
    del state["fc.bias"]
    torch.save(state, cache)
    assert problems() == [
        "model.weights=DEFAULT does not fit ResNet18: missing keys: fc.bias; "
        f"delete {cache} to download it again"
    ]
    cache.unlink()
    cache.mkdir()  # a download would land inside it
    assert problems() == [
        f"model.weights=DEFAULT: {cache} is there but is not a file; remove it to download the "
        "weights again"
    ]
    cache.rmdir()
    torch.save(resnet18().state_dict(), cache)
    assert problems() == []


def test_a_download_that_hears_nothing_fails_in_time(
    torch_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy that takes the connection and never answers hung the pre-flight for good."""
    import socket

    from pipeline import weights

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{silent.getsockname()[1]}")
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 1)
    # urllib builds its opener, with the proxies of that moment, at a process's first urlopen
    import urllib.request

    monkeypatch.setattr(urllib.request, "_opener", None)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{silent.getsockname()[1]}")
    before = socket.getdefaulttimeout()  # another test of this process may have set one
    try:
        with pytest.raises(ConfigError) as info:
            weights.torchvision_state_dict("DEFAULT")
    finally:
        silent.close()
    (line,) = info.value.problems
    assert line.startswith("model.weights=DEFAULT could not be downloaded ("), line
    assert "timed out" in line, line
    assert socket.getdefaulttimeout() == before  # the process's default, as it was
    assert not (torch_home / "hub").exists()  # the folders the download made, gone again


def test_a_stem_for_other_channels_sees_a_grey_image_as_the_weights_stem_does() -> None:
    """data.channels other than 3: the weights' stem adapted (the kernels' sum shared out for
    fewer channels, zeros added for more); an image with one value in every channel gets the
    same response."""
    from pipeline.model import adapt_stem

    conv = resnet18().conv1
    grey = torch.rand(1, 1, 16, 16)
    for channels in (1, 2, 4, 7):
        stem = adapt_stem(conv, channels)
        assert stem.weight.shape == (64, channels, 7, 7)
        torch.testing.assert_close(
            stem(grey.expand(1, channels, 16, 16)), conv(grey.expand(1, 3, 16, 16))
        )
    assert torch.equal(adapt_stem(conv, 1).weight, conv.weight.sum(1, keepdim=True))


def test_weights_and_random_init_build_a_stem_for_the_runs_channels(tmp_path: Path) -> None:
    """data.channels=1 crashed the first forward ("expected input … to have 3 channels")."""
    source = resnet18()
    path = _saved(tmp_path, source.state_dict())
    net = build_resnet18(weights=path, num_classes=10, channels=1)
    assert torch.equal(net.conv1.weight, source.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(net.layer1[0].conv1.weight, source.layer1[0].conv1.weight)
    fresh = build_resnet18(weights=None, num_classes=10, channels=2)
    assert fresh(torch.rand(2, 2, 32, 32)).shape == (2, 10)
    assert 0.5 < fresh.conv1.weight.std() / resnet18().conv1.weight.std() < 2  # torchvision's init
    # A 1-channel run's weights, in a run of 3 channels: its stem adapted back.
    one = _saved(tmp_path, net.state_dict(), "one.pt")
    assert build_resnet18(weights=one, num_classes=10).eval()(torch.rand(1, 3, 32, 32)).shape == (
        1,
        10,
    )


def test_a_resume_with_other_channels_names_the_key_and_the_value_it_was_trained_with() -> None:
    from pipeline.checkpoints import checkpoint_fit_problems
    from pipeline.cli import compose

    one_channel = build_resnet18(weights=None, num_classes=1000, channels=1)
    ckpt = {"state_dict": {f"net.{k}": v for k, v in one_channel.state_dict().items()},
            "global_step": 2}  # fmt: skip
    saved = {"data": {"channels": 1}, "model": {"num_classes": 1000}}
    (problem,) = checkpoint_fit_problems(ckpt, saved, compose("train", []), "last.ckpt")
    assert problem.startswith(
        "ckpt_path=last.ckpt does not fit data.channels=3 (it was trained with data.channels=1: "
    )
    assert (
        "conv1.weight (64, 1, 7, 7) vs (64, 3, 7, 7)); train on with its data.channels=1,"
        in problem
    )
    assert checkpoint_fit_problems(ckpt, saved, compose("train", ["data.channels=1"]), "l") == []


def test_an_optimizer_state_is_checked_in_tensors_numbers_and_lists() -> None:
    """A float step of NaN (older torch's Adam) passed, and the resume stopped steps later."""
    from pipeline.checkpoints import first_nonfinite_optimizer_state

    def where(state: dict[str, object]) -> str | None:
        return first_nonfinite_optimizer_state({"optimizer_states": [{"state": {3: state}}]})

    assert where({"step": 4.0, "exp_avg": torch.zeros(2), "momentum_buffer": None}) is None
    assert where({"step": math.nan}) == "step of parameter 3"
    assert where({"exp_avg_sq": torch.tensor([1.0, math.inf])}) == "exp_avg_sq of parameter 3"
    assert where({"old_dirs": [torch.zeros(2), torch.full((2,), math.nan)]}) == (
        "old_dirs of parameter 3"
    )
    assert first_nonfinite_optimizer_state({"optimizer_states": []}) is None


def test_a_hub_cache_folder_that_cannot_be_made_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TORCH_HOME under a file: NotADirectoryError's traceback, exit 1."""
    from pipeline.weights import torchvision_state_dict

    (a_file := tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("TORCH_HOME", str(a_file / "th"))
    with pytest.raises(ConfigError) as info:
        torchvision_state_dict("DEFAULT")
    assert info.value.problems == [
        f"model.weights=DEFAULT: the hub cache folder {a_file}/th/hub/checkpoints cannot be made "
        "(Not a directory); set TORCH_HOME to a writable folder, or model.weights=null"
    ]


def test_an_unreadable_file_is_called_unreadable_not_damaged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Permissions (a stand-in for torch.load: root reads a mode-000 file anyway) were called a
    truncated, foreign or code-holding file."""
    from pipeline.weights import load_file

    path = _saved(tmp_path, {"a": torch.zeros(1)})

    def refused(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(torch, "load", refused)
    with pytest.raises(ConfigError) as info:
        load_file(path, "model.weights")
    assert info.value.problems == [
        f"model.weights={path} cannot be read (Permission denied); check its permissions"
    ]


def test_a_runs_folder_given_for_a_checkpoint_names_the_checkpoint_in_it(tmp_path: Path) -> None:
    """`ckpt_path=<run folder>` said "is not a file; check the path", as for a missing file."""

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError) as caught:
        load_file(str(tmp_path / "run"), "ckpt_path")
    assert caught.value.problems == [
        f"ckpt_path={tmp_path / 'run'} is a run's folder; its checkpoint is "
        f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}"
    ]
    with pytest.raises(ConfigError) as caught:
        load_file(str(tmp_path / "none.ckpt"), "ckpt_path")
    assert caught.value.problems == [
        f"ckpt_path={tmp_path / 'none.ckpt'} is not a file (no such file); check the path"
    ]

"""What a user sees in TensorBoard: every tag in the event files, and the real server serving them."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

from helpers import only_run_dir, run_cli, scalars
from pipeline.gradients import BLOCKS

SERVER_START_TIMEOUT_S = 90


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small run with histograms every 2 steps and the analytic check every step."""
    root = tmp_path_factory.mktemp("tb")
    home = root / "torch_home"
    home.mkdir()
    args = ["debug=fast", "loss=mse", "callbacks.gradients.histogram_every_n_steps=2",
            "callbacks.gradients.noise_scale=on",
            "callbacks.gradient_check.every_n_steps=1", "callbacks.progress_bar=false", "logger.tensorboard.log_graph=true"]  # fmt: skip
    result = run_cli("pipeline.train", args, root, home)
    assert result.returncode == 0, result.stderr
    return only_run_dir(root)


def test_event_files_hold_every_tag_with_sane_values(run_dir: Path) -> None:
    tags = scalars(run_dir / "tensorboard")
    steps = [0, 1, 2, 3]  # debug=fast: 4 steps, logged every step
    for tag in (
        "train/loss",
        "train/lr",
        "perf/images_per_sec",
        "perf/model_tflops_per_sec",
        "grad_norm/total",
        "update_ratio/total",
        "grad_noise/b_simple",
        "grad_noise/b_simple/layer3",
        "grad_noise/batch_size",
        "grad/nonfinite_count",
    ):
        assert [s for s, _ in tags[tag]] == steps, tag
    for block in BLOCKS:
        assert all(v > 0 and math.isfinite(v) for _, v in tags[f"grad_norm/{block}"]), block
        assert all(0 < v < 10 for _, v in tags[f"update_ratio/{block}"]), block
    for (_, total), *blocks in zip(
        tags["grad_norm/total"], *(tags[f"grad_norm/{b}"] for b in BLOCKS), strict=True
    ):
        assert total == pytest.approx(math.sqrt(sum(v * v for _, v in blocks)), rel=1e-4)
    assert all(v == 0 for _, v in tags["grad/nonfinite_count"])
    assert all(v == 4 for _, v in tags["grad_noise/batch_size"])  # debug=fast: batch 4, halves of 2
    assert all(v == 1.0 for _, v in tags["gradcheck/passed"])
    assert all(
        v < 1e-4 for _, v in tags["gradcheck/fc_bias_max_err"] + tags["gradcheck/fc_weight_max_err"]
    )
    assert len(tags["val/loss"]) == 1 and math.isfinite(tags["val/loss"][0][1])
    assert tags["hparams/val_loss"][0][1] == pytest.approx(tags["val/loss"][0][1])

    acc = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"histograms": 0, "tensors": 0}
    )
    acc.Reload()
    histograms = acc.Tags()["histograms"]
    assert {
        "grad/fc.weight",
        "weight/fc.weight",
        "grad/layer3.1.conv2.weight",
        "weight/bn1.bias",
    } <= set(histograms)
    # every 2 steps, and the first and the last step (a short run's tab is never empty)
    assert [e.step for e in acc.Histograms("grad/fc.weight")] == [0, 1, 3]
    assert "config/text_summary" in acc.Tags()["tensors"]
    assert acc.Tags()["graph"]  # logger.tensorboard.log_graph=true traced the model
    config_text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: mse" in config_text and "batch_size: 4" in config_text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """GET `path`, or POST `body` as JSON (with the header TensorBoard's POST guard wants)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"X-XSRF-Protected": "1", "Content-Type": "application/json"}
    request = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(run_dir: Path) -> Any:
    """The real `tensorboard` on 127.0.0.1 and a free port; stopped after the tests."""
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(run_dir.parents[1]),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "0",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            try:
                _get(base, "/data/runs")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"tensorboard did not start: {proc.stderr.read() if proc.stderr else ''}"
                    ) from None
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_logged_steps_scalars_are_one_event(run_dir: Path) -> None:
    """The module's, the throughput's, the gradient logger's, the noise scale's and the analytic
    check's scalars of a step reach TensorBoard as one event (pipeline.step_scalars), where each
    producer wrote its own (and Lightning's logger one a scalar)."""
    step_tags: dict[int, list[set[str]]] = {}
    for events in (run_dir / "tensorboard").rglob("events.out.tfevents.*"):
        for event in LegacyEventFileLoader(str(events)).Load():
            tags = {v.tag for v in event.summary.value if v.HasField("simple_value")}
            if tags:
                step_tags.setdefault(event.step, []).append(tags)
    together = {"train/loss", "train/lr", "perf/images_per_sec", "grad_norm/total",
                "update_ratio/fc", "grad_noise/b_simple", "gradcheck/passed"}  # fmt: skip
    for step in (0, 1, 2, 3):  # debug=fast: every step logged
        holding = [tags for tags in step_tags[step] if tags & together]
        assert len(holding) == 1 and together <= holding[0], (step, holding)


def test_server_lists_scalars_histograms_layout_and_hparams(server: str, run_dir: Path) -> None:
    run = f"{run_dir.parent.name}/{run_dir.name}/tensorboard"  # as `tensorboard --logdir outputs` names it
    assert run in _get(server, "/data/runs")
    scalar_tags = _get(server, "/data/plugin/scalars/tags")[run]
    assert {"train/loss", "val/loss", "train/lr", "perf/images_per_sec", "grad_norm/layer4", "update_ratio/fc",
            "gradcheck/passed"} <= set(scalar_tags)  # fmt: skip
    assert "grad/fc.bias" in _get(server, "/data/plugin/histograms/tags")[run]
    layout = _get(server, "/data/plugin/custom_scalars/layout")
    charts = {c["title"]: c["multiline"]["tag"] for cat in layout["category"] for c in cat["chart"]}
    assert charts["gradient norm per block"] == ["grad_norm/.*"]
    assert charts["update ratio ‖Δw‖/‖w‖ per block"] == ["update_ratio/.*"]
    assert charts["noise scale B_simple and the global batch"] == ["grad_noise/.*"]
    assert charts["model TFLOP/s (training)"] == ["perf/model_tflops_per_sec"]
    experiment = _get(server, "/data/plugin/hparams/experiment", {"experimentName": ""})
    hparams = {h["name"] for h in experiment["hparamInfos"]}
    assert {"optimizer", "optimizer.lr", "loss", "data.batch_size", "precision", "seed"} <= hparams
    assert not any(h.startswith("callbacks.") for h in hparams)  # switches, not hyperparameters
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} >= {
        "hparams/val_loss",
        "hparams/train_loss",
    }
    assert "config/text_summary" in _get(server, "/data/plugin/text/tags")[run]  # the `config` text

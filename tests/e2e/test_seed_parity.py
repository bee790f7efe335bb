"""The pipeline trains exactly like the notebook's plain PyTorch loop (CPU, 32-true)."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import resnet18

from helpers import only_run_dir, run_cli
from pipeline.data import make_batch

STEPS, BATCH, SIZE, SEED = 3, 4, 32, 42


def notebook_loop(initial: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The seed's cells, repeated: forward, (pred − labels).sum(), backward, SGD 1e-3/0.9 step."""
    model = resnet18()
    model.load_state_dict(initial)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    for step in range(STEPS):
        images, labels = make_batch(  # (B, 3, H, W), (B, 1000): the samples the pipeline makes
            torch.arange(step * BATCH, (step + 1) * BATCH),
            seed=SEED,
            split="train",
            image_size=SIZE,
            channels=3,
            num_classes=1000,
            label_kind="dense",
            device="cpu",
        )
        optimizer.zero_grad()
        prediction = model(images)
        loss = (prediction - labels).sum()
        loss.backward()
        optimizer.step()
    return model.state_dict()


def test_pipeline_weights_equal_the_notebook_loop(tmp_path: Path, torch_home: Path) -> None:
    torch.manual_seed(0)
    initial = resnet18().state_dict()
    torch.save(initial, tmp_path / "init.pt")
    args = [
        f"model.weights={tmp_path / 'init.pt'}",
        f"data.image_size={SIZE}",
        f"data.batch_size={BATCH}",
        f"data.num_samples={STEPS * BATCH}",
        "data.num_val_samples=4",
        f"trainer.max_steps={STEPS}",
        f"seed={SEED}",
        "device=cpu",
        "callbacks.progress_bar=false",
    ]
    result = run_cli("pipeline.train", args, tmp_path, torch_home)
    assert result.returncode == 0, result.stderr
    trained = torch.load(only_run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    expected = notebook_loop(initial)
    assert trained.keys() == {f"net.{k}" for k in expected}
    unequal = [k for k, v in expected.items() if not torch.equal(trained[f"net.{k}"], v)]
    assert unequal == []
    assert not torch.equal(expected["fc.weight"], initial["fc.weight"])  # it did train

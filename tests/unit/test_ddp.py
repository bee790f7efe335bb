"""device=ddp_cpu: two real processes on gloo, one run directory, the analytic check on every rank."""

from __future__ import annotations


def test_slurm_launcher_asks_one_task_per_gpu() -> None:
    from pipeline.cli import compose

    cfg = compose(
        "train",
        ["hydra/launcher=slurm", "device=ddp", "device.devices=4", "device.num_nodes=2"],
        with_hydra=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)

"""override_checks.compose: composed once a process, handed out as copies."""

from __future__ import annotations

from pipeline.override_checks import compose


def test_each_compose_is_a_copy_of_its_own() -> None:
    first = compose("train", ["data.image_size=48"])
    first.data.image_size = 999
    assert compose("train", ["data.image_size=48"]).data.image_size == 48
    assert compose("train", ["data.image_size=40"]).data.image_size == 40


def test_hydra_keys_shape_the_hydra_node_and_nothing_else() -> None:
    plain = compose("train", ["data.image_size=48", "hydra.run.dir=/a"])
    assert "hydra" not in plain and plain.data.image_size == 48
    dirs = [
        compose(
            "train", ["data.image_size=48", f"hydra.run.dir={d}"], with_hydra=True
        ).hydra.run.dir
        for d in ("/a", "/b")
    ]
    assert dirs == ["/a", "/b"]

"""override_checks.compose: composed once a process, handed out as copies."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import HydraException

from pipeline import override_checks
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


def test_a_config_file_that_is_not_yaml_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's own group option (conf/search/<name>.yaml, say) with a YAML syntax error: the
    commands printed yaml's ParserError traceback and exited 1."""
    (tmp_path / "broken.yaml").write_text("study: mine\nparams:\n  optimizer.lr: [1e-3, 1e-2\n")
    monkeypatch.setattr(override_checks, "CONFIG_DIR", tmp_path)
    with pytest.raises(HydraException) as raised:
        override_checks.compose("broken", [])
    assert str(raised.value) == (
        f"{tmp_path / 'broken.yaml'}, line 3, column 17 is not valid YAML (while parsing a flow "
        "sequence: expected ',' or ']', but got '<stream end>'); fix the file"
    )


def test_a_list_of_unquoted_key_value_items_gets_the_quoted_form() -> None:
    """'bench.knobs=[not_a_key=1]' was "cannot parse … no viable alternative" with no hint."""
    (problem,) = override_checks.unparsable(
        ["bench.knobs=[optimizer.fused=false,data.num_workers=1]"]
    )
    assert problem.endswith(
        """; quote each KEY=VALUE in the list: 'bench.knobs=["optimizer.fused=false","data.num_workers=1"]'"""
    )
    assert override_checks.unparsable(['bench.knobs=["optimizer.fused=false"]']) == []


def test_a_sweep_of_optimizer_classes_takes_each_ones_arguments_without_plus() -> None:
    """-m optimizer._target_=torch.optim.Adam,torch.optim.AdamW optimizer.amsgrad=true ran both
    jobs without amsgrad, exit 0: the sweep was read as one class name, none took the key."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = ["~optimizer.momentum", "optimizer._target_=torch.optim.Adam,torch.optim.AdamW",
             "optimizer.amsgrad=true"]  # fmt: skip
    parsed = OverridesParser.create().parse_overrides(lines)
    rewritten, problems = override_checks.resolve_keys(parsed, compose("train", []))
    assert problems == [] and "+optimizer.amsgrad=true" in rewritten
    one = OverridesParser.create().parse_overrides(["optimizer.amsgrad=true"])
    _, problems = override_checks.resolve_keys(one, compose("train", []))  # SGD takes none
    assert problems == [
        "optimizer.amsgrad is not a key of the chosen optimizer (got optimizer.amsgrad=true; it "
        "has: _target_, _partial_, lr, momentum, weight_decay, fused); optimizer=adam and "
        "optimizer=adamw have it: choose one or drop optimizer.amsgrad"
    ]


def test_each_fix_a_line_names_works_where_it_is_given() -> None:
    """Review: `+optimizer.foo=1` said "drop it: ~optimizer.foo", which Hydra then refused
    ("Could not delete from config"), a line with no fix, as was "'foo' is not KEY=VALUE"."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from pipeline.cli import preflight
    from pipeline.config import validate

    _, problems = preflight("train", ["+optimizer.foo=1"], False, validate)
    assert problems[0].endswith(
        "drop +optimizer.foo=… from the command line (or, where a config file sets it, remove "
        "it: ~optimizer.foo)"
    )
    parse = OverridesParser.create().parse_overrides
    base = compose("train", [])
    _, problems = override_checks.resolve_keys(parse(["~optimizer.foo"]), base)
    assert problems == ["~optimizer.foo: the config has no optimizer.foo to remove; drop it"]
    for fine in (["+optimizer.foo=1", "~optimizer.foo"], ["~optimizer.momentum"], ["~seed"]):
        assert override_checks.resolve_keys(parse(fine), base)[1] == [], fine
    assert preflight("train", ["+optimizer.foo=1", "~optimizer.foo"], False, validate)[1] == []
    # A null key: Hydra's "Could not delete from config. 'model.weights' does not exist."
    for null in (
        ["~model.weights"],
        ["~model.weights=null"],
        ["model.weights=null", "~model.weights"],
    ):
        assert preflight("train", null, False, validate)[1] == [
            f"{null[-1]}: model.weights is null already, and Hydra cannot remove a null key; drop it"
        ]
    # a mapping in the config, set to null by the command line first (review)
    nulled = ["callbacks.gradients=null", "~callbacks.gradients"]
    assert preflight("train", nulled, False, validate)[1] == [
        "~callbacks.gradients: callbacks.gradients is null already, and Hydra cannot remove a "
        "null key; drop it"
    ]
    # set before: Hydra removes it (what the run then lacks, config.validate says)
    assert (
        override_checks.resolve_keys(parse(["model.weights=w.pt", "~model.weights"]), base)[1] == []
    )
    (line,) = override_checks.stray_words(["foo"])
    assert line.endswith("+KEY=VALUE to add a key, ~KEY to remove one")

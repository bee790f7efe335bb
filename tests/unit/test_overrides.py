"""pipeline.overrides.override: `key=value` that Hydra parses back to exactly the value."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from pipeline import cli
from pipeline.overrides import override

PARSER = OverridesParser.create()


def parsed_back(text: str) -> object:
    """The value a config key holds after Hydra parses `override("k", text)` and OmegaConf
    reads it (interpolations resolved)."""
    value = PARSER.parse_override(override("k", text)).value()
    return OmegaConf.create({"k": value}).k


@pytest.mark.parametrize(
    "text",
    ["/tmp/out", "two words", "a,b", "it's", "x[1]", "a=b", "naïve", "/tmp/a${x}b",
     "a\\${x}", "a\\\\${x}", "${", "$x", "a\\'b", "ends\\", "\\'${"],
)  # fmt: skip
def test_a_value_parses_back_to_itself(text: str) -> None:
    """`${` was left as it is, and Hydra read `bench.output=/tmp/a${x}b` as an interpolation:
    InterpolationKeyError, key 'x' not found."""
    assert parsed_back(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("ab/ ,'\"\\${}[]=:%~é")), min_size=1, max_size=12))
def test_any_path_like_text_parses_back_to_itself(text: str) -> None:
    assert parsed_back(text) == text


def test_a_value_the_user_typed_keeps_its_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A search's choices are the user's values: `choice(${oc.env:HOME}/w1.pt,none)` names a
    file under the home folder, which escaping `${` made the literal text."""
    from pipeline.search_space import as_overrides

    monkeypatch.setenv("HOME", "/home/someone")
    (line,) = as_overrides({"model.weights": "${oc.env:HOME}/w1.pt"})
    value = PARSER.parse_override(line).value()
    assert OmegaConf.create({"k": value}).k == "/home/someone/w1.pt"
    assert parsed_back("${oc.env:HOME}/w1.pt") == "${oc.env:HOME}/w1.pt"  # a path: literal


@pytest.mark.parametrize("typed", [[], ["loss=mse"]])
def test_the_command_as_typed_is_what_was_typed(
    typed: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run.json's command: a bare `python -m pipeline.train` was recorded with the run
    directory the pre-flight pinned (`hydra.run.dir=outputs/…`), which nobody typed (review)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["/somewhere/pipeline/train.py", *typed])
    handed: list[list[str]] = []
    cli.run(lambda: handed.append(sys.argv[1:]), "train", "pipeline.train", lambda cfg: [])
    assert handed[0][-1].startswith("hydra.run.dir=")  # what Hydra gets
    assert cli.command_line() == ["python", "-m", "pipeline.train", *typed]

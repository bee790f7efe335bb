"""The table of rules: every row names a real key, the defaults pass it, and its wording."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from pipeline.cli import compose
from pipeline.config import RULES
from pipeline.config_rules import choice, flag, integer, number, problems

# One config per group option that some row's `when` asks for.
CONFIGS = {
    "default": [],
    "workers": ["data.num_workers=1"],
    "ddp": ["device=ddp_cpu"],
    "cosine": ["scheduler=cosine"],
    "step": ["scheduler=step"],
    "torch profiler": ["profiler=torch", "trainer.max_steps=16"],
}
_ABSENT = object()


def test_every_row_names_a_key_of_the_composed_config_and_its_default_passes() -> None:
    seen = set()
    for overrides in CONFIGS.values():
        cfg = compose("train", overrides)
        for rule in RULES:
            if rule.when is not None and not rule.when(cfg):
                continue
            assert OmegaConf.select(cfg, rule.key, default=_ABSENT) is not _ABSENT, rule.key
            assert rule.problem(cfg) is None, (overrides, rule.key)
            seen.add(rule.key)
    assert seen == {rule.key for rule in RULES}  # each row checked in some config


def test_one_wording_for_every_kind_of_row() -> None:
    cfg = OmegaConf.create({"a": 0, "b": "x", "c": -1.5, "d": 1, "e": "off"})
    rows = [
        integer("a", 1, 4),
        integer("b", 0, 0, high=3),
        number("c", "a number ≥ 0", lambda v: v >= 0, "10", note="; 0: off"),
        flag("d"),
        choice("e", ("auto", "on"), "auto"),
    ]
    assert problems(cfg, rows) == [
        "a must be ≥ 1 (got 0); set a=4",
        "b must be an integer in [0, 3] (got 'x'); set b=0",
        "c must be a number ≥ 0 (got -1.5; 0: off); set c=10",
        "d must be true or false (got 1); set d=false",  # 1 == True, yet not a bool
        "e must be one of auto, on (got 'off'); set e=auto",
    ]


@pytest.mark.parametrize("value", [1, 0, "yes"])
def test_a_boolean_choice_takes_only_booleans(value: object) -> None:
    (problem,) = problems(
        OmegaConf.create({"k": value}),
        [choice("k", (True, False, "auto"), "auto", "true, false or auto")],
    )
    assert problem.startswith("k must be true, false or auto")

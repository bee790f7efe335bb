"""Keys a run needs that its config lacks: a `~KEY` on the command line removed them, or `KEY=V`
put a value that is not a mapping (null, a number) where a node of keys was (or a config file
of the user's has none).

A rule's line for such a key read it as null and said "set KEY=…", which Hydra refuses for a key
that is not there (it takes `+KEY=…`, or no `~`): `~seed` was told "set seed=42", and
`~callbacks.gradients` got four lines, three of them "set callbacks.gradients.<key>=…". Here
they are one line for each node removed or replaced, which names what to drop.
"""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import DictConfig

from pipeline.config_rules import hydra_value, key_of, value
from pipeline.override_checks import has_key
from pipeline.overrides import override

# What took a key away: the highest node on its path the config lacks (None), or that holds a
# value that is not a mapping above it (that value, as a command line spells it: "null", "5").
Removal = tuple[str, str | None]
MISSING = ", and the run needs"  # in every line of these (is_absence_line)


def removal_of(cfg: DictConfig, key: str) -> Removal | None:
    """What took dotted `key` away from `cfg` (Removal); None where `key` is there."""
    parts = key.split(".")
    for depth in range(1, len(parts) + 1):
        node = ".".join(parts[:depth])
        if not has_key(cfg, node):
            return node, None
        held = value(cfg, node)
        if depth < len(parts) and not isinstance(held, DictConfig):
            return node, _as_typed(cfg, node)
    return None


def _as_typed(cfg: DictConfig, node: str) -> str:
    """`node`'s value as a command line gives it: unresolved (${seed}, not 42), quoted where
    Hydra needs it ('' and 'a b', where they read as nothing and as a bare `a b`)."""
    parent, _, name = node.rpartition(".")
    holder = value(cfg, parent) if parent else cfg
    raw = holder._get_node(name)._value()  # type: ignore[union-attr]  # a DictConfig's child
    text = raw if isinstance(raw, str) else hydra_value(raw)
    return override(node, text, interpolate=True).split("=", 1)[1]


def absent_key_problems(cfg: DictConfig, found: list[str], needed: Iterable[str]) -> list[str]:
    """`found` (problem lines, one a key) without the lines about keys `cfg` lacks, and one line
    for each node that took them away, covering those keys and the `needed` keys it lacks."""
    by_removal: dict[Removal, list[str]] = {}
    kept = []
    for line in found:
        removal = removal_of(cfg, key_of(line))
        if removal is None:
            kept.append(line)
        else:
            by_removal.setdefault(removal, []).append(key_of(line))
    for key in needed:
        removal = removal_of(cfg, key)
        if removal is not None and key not in by_removal.get(removal, []):
            by_removal.setdefault(removal, []).append(key)
    return kept + _lines(by_removal)


def _lines(by_removal: dict[Removal, list[str]]) -> list[str]:
    """A line for each removal; one for the keys removed under one parent that is there
    (`~trainer +trainer.max_steps=1` left three out: three lines, each naming a ~ of its own)."""
    siblings: dict[str, list[str]] = {}
    for node, held in by_removal:
        if held is None and "." in node:
            siblings.setdefault(node.rpartition(".")[0], []).append(node)
    lines, said = [], set()
    for (node, held), keys in by_removal.items():
        parent = node.rpartition(".")[0]
        if held is None and len(siblings.get(parent, [])) > 1:
            if parent not in said:
                said.add(parent)
                names = ", ".join(n.rpartition(".")[2] for n in siblings[parent])
                lines.append(f"{parent} lacks {names}{MISSING} them; drop the ~ that removed "
                             f"them from the command line (a ~ of each, or ~{parent})")  # fmt: skip
        else:
            lines.append(_line(node, held, keys))
    return lines


def is_absence_line(problem: str) -> bool:
    """Whether `problem` is one of these lines: a key or node missing, or not a mapping."""
    return MISSING in problem


def _line(node: str, held: str | None, keys: list[str]) -> str:
    below = ", ".join(k.removeprefix(f"{node}.") for k in keys)  # its keys, by their own names
    if held is not None:
        return (f"{node} is {held}, not a mapping{MISSING} its keys ({below}); "
                f"drop {node}={held} from the command line")  # fmt: skip
    # The ~ may have been a key's above it, whose keys a + put back in part: ~trainer
    # +trainer.max_steps=1 leaves trainer.log_every_n_steps out.
    above = ", or ~ of a key above it" if "." in node else ""
    drop = f"drop the ~ that removed it from the command line (~{node}{above})"
    if keys == [node]:
        return f"{node} is missing{MISSING} it; {drop}"
    return f"{node} is missing{MISSING} its keys ({below}); {drop}"

"""How a command reports config problems: one line each on stderr, under a header naming it.
Standard library only: a command's first line reports with it before anything is imported
(launch_rank.refuse_unreadable_rank), and the rest through cli."""

from __future__ import annotations

import sys


def report_problems(problems: list[str], program: str) -> None:
    """One line per problem on stderr, under a header naming the program."""
    noun = "problem" if len(problems) == 1 else "problems"
    print(f"{program}: {len(problems)} config {noun}:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)

"""Building Hydra overrides from values the user did not type (paths, above all)."""

from __future__ import annotations

import re
import shlex

PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:+\-]+")


def override(key: str, value: object, *, interpolate: bool = False) -> str:
    """`key=value` that Hydra parses back to exactly `value`: a path with spaces, quotes,
    commas or non-ASCII letters is single-quoted, with Hydra's escapes for quotes and the
    backslashes before them, and OmegaConf's for `${` (else an interpolation); unless
    `interpolate` (a value the user typed, whose `${…}` is OmegaConf's to resolve)."""
    text = str(value)
    if PLAIN_VALUE.fullmatch(text):
        return f"{key}={text}"
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    if not interpolate:
        escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", escaped)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)  # before the closing quote
    return f"{key}='{escaped}'"


def shell_word(text: str) -> str:
    """`text` as one word for a POSIX shell, readably: "…" where nothing in it is special
    inside double quotes, else shlex's quoting."""
    if text == shlex.quote(text):
        return text
    return f'"{text}"' if not re.search(r'["$`\\!]', text) else shlex.quote(text)

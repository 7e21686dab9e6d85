"""File-name patterns as WebDataset users write them: brace ranges and lists
(``train-{000000..000146}.tar``, ``{train,val}-0.tar``) and shell globs (``train-*.tar``).

A location whose last component is a pattern names the files under its parent that match
it; :func:`split_pattern` tells such a location apart, and :func:`matching` picks the names.
"""

from __future__ import annotations

import fnmatch
import re

__all__ = ["expand_braces", "matching", "split_pattern"]

_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """Every name a brace pattern stands for, in order: ``{a..b}`` counts from ``a`` to
    ``b`` keeping ``a``'s zero padding, ``{x,y}`` takes each item; braces nest by
    expansion from the left."""
    found = _BRACE.search(pattern)
    if found is None:
        return [pattern]
    head, tail = pattern[: found.start()], pattern[found.end() :]
    body = found.group(1)
    span = _RANGE.match(body)
    if span is not None:
        lo, hi = int(span.group(1)), int(span.group(2))
        width = len(span.group(1))
        step = 1 if hi >= lo else -1
        items = [f"{i:0{width}d}" for i in range(lo, hi + step, step)]
    else:
        items = body.split(",")
    return [name for item in items for name in expand_braces(head + item + tail)]


def split_pattern(location: str) -> tuple[str, str] | None:
    """``(parent, pattern)`` where the last component of ``location`` is a pattern, else
    None."""
    parent, _, last = location.rstrip("/").rpartition("/")
    if not last or not (_BRACE.search(last) or any(c in last for c in "*?[")):
        return None
    return parent or ".", last


def matching(names: list[str], pattern: str) -> list[str]:
    """The names among ``names`` (relative to the pattern's parent, in their order) that
    the pattern names: any of its brace expansions, each a glob."""
    wanted = expand_braces(pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n, w) for w in wanted)]

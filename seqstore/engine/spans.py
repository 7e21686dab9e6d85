"""Spans: ``(k, 2)`` int64 arrays of ``[start, stop)`` storage ranges, and the set
arithmetic the epoch plan does on them, in numpy, without a loop over records."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = [
    "Span",
    "expand_counts",
    "complement",
    "cut",
    "intersect",
    "iter_indices",
    "iter_spans",
    "merge",
    "union",
]

Span = tuple[int, int]


def expand_counts(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For items that each stand for ``counts[i]`` pieces: every piece's item, and its
    number within the item."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return owner, np.arange(len(owner)) - first[owner]


def intersect(spans: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """The parts of ``spans`` inside the sorted, disjoint ``ranges``, in span order."""
    lo = np.searchsorted(ranges[:, 1], spans[:, 0], side="right")
    hi = np.searchsorted(ranges[:, 0], spans[:, 1], side="left")
    owner, k = expand_counts(np.maximum(hi - lo, 0))
    hit = ranges[lo[owner] + k]
    out = np.stack(
        [np.maximum(hit[:, 0], spans[owner, 0]), np.minimum(hit[:, 1], spans[owner, 1])], axis=1
    )
    return out[out[:, 0] < out[:, 1]]


def union(spans: np.ndarray) -> np.ndarray:
    """The records of any of ``spans``, as sorted, disjoint ranges (touching ones joined)."""
    spans = spans[spans[:, 0] < spans[:, 1]]
    if not len(spans):
        return spans
    spans = spans[np.argsort(spans[:, 0], kind="stable")]
    reach = np.maximum.accumulate(spans[:, 1])
    new = np.ones(len(spans), bool)
    new[1:] = spans[1:, 0] > reach[:-1]
    return np.stack([spans[new, 0], reach[np.append(new[1:], True)]], axis=1)


def complement(ranges: np.ndarray, n: int) -> np.ndarray:
    """The records of ``range(n)`` outside the sorted, disjoint ``ranges``."""
    edges = np.concatenate([[0], ranges.ravel(), [n]]).reshape(-1, 2)
    return edges[edges[:, 0] < edges[:, 1]]


def cut(spans: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """Positions ``[a, b)`` of the sequence that ``spans`` concatenate, for each row of
    ``pieces`` (sorted, disjoint), as spans."""
    lengths = spans[:, 1] - spans[:, 0]
    before = np.concatenate([[0], np.cumsum(lengths)])
    first = np.searchsorted(before, pieces[:, 0], side="right") - 1
    stop = np.searchsorted(before, pieces[:, 1], side="left")
    owner, k = expand_counts(np.maximum(stop - first, 0))
    i = first[owner] + k
    out = np.stack(
        [
            spans[i, 0] + np.maximum(pieces[owner, 0] - before[i], 0),
            spans[i, 0] + np.minimum(pieces[owner, 1] - before[i], lengths[i]),
        ],
        axis=1,
    )
    return out[out[:, 0] < out[:, 1]]


def merge(spans: np.ndarray) -> np.ndarray:
    """Join spans that continue each other, so a read never stops where it need not."""
    if len(spans) < 2:
        return spans
    new = np.ones(len(spans), bool)
    new[1:] = spans[1:, 0] != spans[:-1, 1]
    last = np.append(new[1:], True)
    return np.stack([spans[new, 0], spans[last, 1]], axis=1)


def iter_spans(spans: np.ndarray) -> Iterator[Span]:
    """The rows of ``spans`` as pairs of Python ints, one at a time."""
    for start, stop in spans:
        yield int(start), int(stop)


def iter_indices(spans: np.ndarray, skip: int = 0) -> Iterator[int]:
    """Indices of ``spans`` in read order, starting after the first ``skip``."""
    for start, stop in iter_spans(spans):
        if skip >= stop - start:
            skip -= stop - start
            continue
        yield from range(start + skip, stop)
        skip = 0

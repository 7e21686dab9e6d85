"""Several sources in one epoch: how many records each gives, and in what order they come.

Pure functions of (the sources' sizes, their counts, block size, seed, epoch), as the rest
of the engine. The sources lie one after another in one index space (source ``i``'s records
are ``offsets[i]`` to ``offsets[i] + sizes[i] - 1``), and an epoch of a mix is a sequence
of storage positions like one store's (:class:`MixSequence`), which ranks and workers share
out as they share one store's.

Counts (:func:`source_counts`): sources with an absolute count (``choose``, or ``repeat``
times their size, rounded half up) take theirs first; sources with a ``weight`` share the
rest of the epoch in proportion, each its floor, and the records left over go one each to
the sources with the largest remainders (ties to the earlier source): the largest-remainder
method, so the counts always sum to the epoch's size.

The engine orders an epoch of a mix as it orders one store of ``sum(counts)`` records:
those records are the epoch's positions in :class:`MixSequence`, which maps each to a
source's record (:meth:`MixSequence.reader` reads positions as storage runs). Blocks,
shuffle buffer, ranks, workers and an elastic resume (the positions not yet delivered)
are then one store's.

Order: a source gives its count from a stream that runs through its records pass after
pass, each pass in another block order (with ``shuffle``; in storage order from where the
last epoch stopped without it), so a source with fewer records than its count repeats, one
with more gives another subset each epoch. Each source's stream is cut into pieces of one
block, and the pieces of all sources are interleaved by their share: piece ``j`` of a
source of ``p`` pieces stands at ``(j + 0.5) / p`` of the epoch. So every stretch of the
epoch, and so every shuffle buffer, holds the sources in their proportions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from ..records import Record
from .order import BlockOrder

__all__ = ["MixSequence", "source_counts"]


def source_counts(
    sizes: Sequence[int],
    *,
    weights: Sequence[float | None],
    fixed: Sequence[int | None],
    epoch_size: int | None = None,
) -> list[int]:
    """Records each source gives per epoch.

    Parameters
    ----------
    sizes
        Records in each source.
    weights
        Each source's weight, or None for a source with a fixed count.
    fixed
        Each source's absolute count (``choose``, or ``repeat`` times its size), or None.
    epoch_size
        Records per epoch; default: the sum of the sizes.

    Raises
    ------
    ValueError
        The fixed counts exceed the epoch, or a source has neither or both.
    """
    total = sum(sizes) if epoch_size is None else epoch_size
    counts = [0] * len(sizes)
    for i, (w, f) in enumerate(zip(weights, fixed, strict=True)):
        if (w is None) == (f is None):
            raise ValueError(f"source {i} needs one of weight, repeat or choose")
        if f is not None:
            counts[i] = f
    rest = total - sum(counts)
    shared = [i for i, w in enumerate(weights) if w is not None]
    if rest < 0 or (rest and not shared and epoch_size is not None):
        raise ValueError(
            f"the sources' repeat/choose counts ({sum(counts)}) do not fit epoch_size {total}"
        )
    if shared:
        whole = sum(weights[i] or 0.0 for i in shared)
        exact = [rest * (weights[i] or 0.0) / whole for i in shared]
        floors = [math.floor(x) for x in exact]
        left = rest - sum(floors)
        by_remainder = sorted(range(len(shared)), key=lambda k: (floors[k] - exact[k], k))
        for k in by_remainder[:left]:
            floors[k] += 1
        for k, i in enumerate(shared):
            counts[i] = floors[k]
    return counts


def _key(seed: int, epoch: int, source: int, repeat: int) -> int:
    """The block order key of pass ``repeat`` of ``source`` in ``epoch``."""
    entropy = [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, source, repeat, 0x313C]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class MixSequence:
    """The storage positions of one epoch of a mix, in read order.

    Parameters
    ----------
    sizes, counts
        Records in each source, and records it gives this epoch (:func:`source_counts`).
    block
        Records per piece (one sequential read).
    seed, epoch, shuffle
        As for one store's :class:`~seqstore.engine.order.BlockOrder`.

    Attributes
    ----------
    length : int
        Records in the epoch, the sum of ``counts``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        counts: Sequence[int],
        block: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool,
    ) -> None:
        if any(c and not n for n, c in zip(sizes, counts, strict=True)):
            raise ValueError("an empty source cannot give records")
        self.sizes, self.counts = list(sizes), list(counts)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.length = int(sum(counts))
        self.block, self.seed, self.epoch, self.shuffle = block, seed, epoch, shuffle
        pieces = [-(-c // block) for c in counts]
        source = np.repeat(np.arange(len(counts)), pieces)
        within = np.concatenate([np.arange(p) for p in pieces] or [np.zeros(0, np.int64)])
        at = (within + 0.5) / np.repeat(np.maximum(pieces, 1), pieces)
        order = np.lexsort((source, at))  # by place in the epoch, ties by source
        self._source = source[order].astype(np.int64)
        lo = within[order].astype(np.int64) * block
        self._lo = lo
        self._hi = np.minimum(lo + block, np.asarray(self.counts, np.int64)[self._source])
        self._start = np.concatenate([[0], np.cumsum(self._hi - self._lo)]).astype(np.int64)
        self._orders: dict[tuple[int, int], BlockOrder] = {}
        self._runs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _stream(self, i: int, lo: int, hi: int) -> list[np.ndarray]:
        """Storage ranges of positions ``[lo, hi)`` of source ``i``'s stream."""
        n, out = self.sizes[i], []
        base = int(self.offsets[i])
        if not self.shuffle:  # storage order, from where the last epoch's count ended
            start = (self.epoch * self.counts[i]) % n
            q = lo
            while q < hi:
                at = (start + q) % n
                take = min(hi - q, n - at)
                out.append(np.array([[base + at, base + at + take]], np.int64))
                q += take
            return out
        q = lo
        while q < hi:
            repeat, at = divmod(q, n)
            take = min(hi - q, n - at)
            order = self._orders.get((i, repeat))
            if order is None:
                key = _key(self.seed, self.epoch, i, repeat)
                order = self._orders[(i, repeat)] = BlockOrder(
                    n, self.block, seed=key, epoch=0, shuffle=True
                )
            out.append(order.spans(at, at + take) + base)
            q += take
        return out

    def sources(self, positions: np.ndarray) -> np.ndarray:
        """The source of each epoch position in ``positions``."""
        piece = np.searchsorted(self._start, positions, side="right") - 1
        return self._source[piece]

    def storage(self, positions: np.ndarray) -> np.ndarray:
        """The storage index of each epoch position in ``positions`` (each piece's storage
        runs are found once, and kept)."""
        positions = np.asarray(positions, np.int64)
        out = np.empty_like(positions)
        piece = np.searchsorted(self._start, positions, side="right") - 1
        for p in np.unique(piece).tolist():
            runs = self._runs.get(p)
            if runs is None:
                spans = self.spans(int(self._start[p]), int(self._start[p + 1]))
                runs = self._runs[p] = (spans[:, 0], np.cumsum(spans[:, 1] - spans[:, 0]))
            starts, ends = runs
            at = piece == p
            offset = positions[at] - self._start[p]
            k = np.searchsorted(ends, offset, side="right")
            out[at] = starts[k] + offset - np.concatenate([[0], ends])[k]
        return out

    def reader(
        self, read_block: Callable[[int, int], list[Record]]
    ) -> Callable[[int, int], list[Record]]:
        """``read_block`` of epoch positions: positions ``[lo, hi)`` read as the few
        storage runs they are (each one sequential read)."""

        def read(lo: int, hi: int) -> list[Record]:
            out: list[Record] = []
            for start, stop in self.spans(lo, hi).tolist():
                out += read_block(start, stop)
            return out

        return read

    def spans(self, lo: int, hi: int) -> np.ndarray:
        """Storage ranges of epoch positions ``[lo, hi)``, in order."""
        if lo >= hi:
            return np.zeros((0, 2), np.int64)
        first = int(np.searchsorted(self._start, lo, side="right")) - 1
        last = int(np.searchsorted(self._start, hi - 1, side="right")) - 1
        out: list[np.ndarray] = []
        for p in range(first, last + 1):
            a = max(lo, int(self._start[p])) - int(self._start[p]) + int(self._lo[p])
            b = min(hi, int(self._start[p + 1])) - int(self._start[p]) + int(self._lo[p])
            out += self._stream(int(self._source[p]), a, b)
        return np.concatenate(out)

"""Which records each worker of each rank reads in an epoch, and in what order.

Pure functions of (record count, block size, seed, epoch, rank, world size, worker, worker
count, batch size, drop_last): no I/O, no torch. The scheme:

1. The store is cut into contiguous blocks of ``block`` records (a few MB each), so that
   every read is long and sequential. With ``shuffle`` the block order is permuted per
   (seed, epoch); the concatenated blocks form the epoch's sequence (:class:`BlockOrder`).
   An epoch resumed on another shape runs over the records its interrupted run had not
   delivered: the same sequence with the others left out (:class:`Subsequence`).
2. Rank ``r`` takes the ``r``-th contiguous slice of that sequence. All ranks get the same
   number of samples: without ``drop_last`` the sequence wraps around to pad the last rank
   (as ``DistributedSampler`` does); with it, the tail is dropped. So every rank runs the
   same number of batches and DDP never waits on a rank that ran out. For exact evaluation
   the ranks' slices may instead differ by one record (``pad=False``): each record once.
3. Within a rank, each worker reads one contiguous run of the rank's slice with ``shuffle``
   and mixes it in its own seeded shuffle buffer (:mod:`seqstore.engine.shuffle`). With
   ``split``, every batch is made of one part from each worker's stream (worker ``w``'s
   part is the ``w``-th of ``workers`` nearly equal slices of the batch,
   :func:`part_bounds`), so a batch draws from the buffers of all of the rank's workers at
   once: the mix of one rank-wide buffer, at the memory of the per-worker ones. Without
   ``split`` batch ``j`` belongs to worker ``j % workers`` whole, the order in which
   ``torch.utils.data.DataLoader`` collects items from its workers. Without ``shuffle``
   each worker reads exactly the records of its own batches, so that the batches,
   collected round-robin, come out in storage order.

Only the last batch of a rank can be short (without ``drop_last``): it is the last batch of
the worker that owns it, or (``split``) the last part of every worker, and workers whose
part of it is empty yield one part fewer.

A worker's plan costs time and memory in proportion to its own share, never to the store:
no structure over every block is built, but in an epoch resumed on another shape, whose
:class:`Subsequence` counts the records kept in every block (an array per block, built by
each worker). Up to :data:`TABLE_LIMIT` blocks the permutation
is numpy's (a table of at most 32 MB); beyond, a keyed Feistel network over the block
numbers, evaluated only at the positions a worker reads, and everything else is closed
form. Spans are ``(k, 2)`` int64 arrays of ``[start, stop)`` storage ranges.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from .spans import cut, intersect

__all__ = ["TABLE_LIMIT", "BlockOrder", "EpochSequence", "Subsequence", "wrapped"]

TABLE_LIMIT = 1 << 22
"""Most blocks whose order is a table drawn by numpy (the order of every store up to
4,194,304 blocks, 150M records in 4 MB blocks of ImageNet-sized images); larger stores use
the Feistel permutation, which needs no table."""

_ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]))


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a 64-bit hash, wrapping as unsigned arithmetic does."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _Feistel:
    """A keyed permutation of ``range(size)``, evaluated at any points, either way.

    A balanced Feistel network permutes the ``2 * half``-bit numbers, the smallest such
    domain holding ``size`` (under 4x as large); cycle walking (apply again until the
    value falls below ``size``) restricts it to ``range(size)``.
    """

    def __init__(self, size: int, keys: np.ndarray) -> None:
        self.size = size
        self.half = max(1, ((size - 1).bit_length() + 1) // 2)
        self.mask = np.uint64((1 << self.half) - 1)
        self.keys = keys

    def _round(self, key: np.uint64, x: np.ndarray) -> np.ndarray:
        return _mix((x + key) * _GOLDEN) & self.mask

    def _walk(self, x: np.ndarray, inverse: bool) -> np.ndarray:
        shift = np.uint64(self.half)
        keys = self.keys[::-1] if inverse else self.keys
        out = x.astype(np.uint64)
        todo = np.ones(len(out), bool)
        while todo.any():
            left, right = out[todo] >> shift, out[todo] & self.mask
            for key in keys:
                if inverse:
                    left, right = right ^ self._round(key, left), left
                else:
                    left, right = right, left ^ self._round(key, right)
            out[todo] = (left << shift) | right
            todo = out >= self.size
        return out.astype(np.int64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self._walk(x, inverse=False)

    def inverse(self, y: np.ndarray) -> np.ndarray:
        return self._walk(y, inverse=True)


class EpochSequence(Protocol):
    """An epoch's records in read order, of which any stretch can be had as spans."""

    @property
    def length(self) -> int:
        """Records in the sequence."""
        ...

    def spans(self, lo: int, hi: int) -> np.ndarray:
        """Storage ranges of positions ``[lo, hi)``, ``0 <= lo <= hi <= length``, in order."""
        ...


class BlockOrder:
    """The epoch's sequence: every record of the store, block by block in permuted order.

    Parameters
    ----------
    n
        Records in the store.
    block
        Records per block (the last block may be shorter).
    seed, epoch
        Together they fix the permutation.
    shuffle
        Permute the blocks; otherwise storage order.

    Attributes
    ----------
    length : int
        ``n``.
    num_blocks : int
        Blocks in the store.
    """

    def __init__(self, n: int, block: int, *, seed: int, epoch: int, shuffle: bool) -> None:
        if n < 0 or block < 1:
            raise ValueError(f"need n >= 0 and block >= 1, got n={n}, block={block}")
        self.length = n
        self.block = block
        self.num_blocks = -(-n // block)
        self._table: np.ndarray | None = None
        self._feistel: _Feistel | None = None
        if shuffle and self.num_blocks > 1:
            if self.num_blocks <= TABLE_LIMIT:
                self._table = _rng(seed, epoch, 0x5EB1).permutation(self.num_blocks)
            else:
                entropy = [seed & 0xFFFFFFFF, epoch & 0xFFFFFFFF, 0xFE15]
                keys = np.random.SeedSequence(entropy).generate_state(_ROUNDS, np.uint64)
                self._feistel = _Feistel(self.num_blocks, keys)
        # The short last block moves every block placed after it back by its shortfall.
        self._tail = n - (self.num_blocks - 1) * block
        last = np.array([self.num_blocks - 1])
        if self._table is not None:
            self._short_at = int(np.flatnonzero(self._table == last[0])[0])
        elif self._feistel is not None:
            self._short_at = int(self._feistel.inverse(last)[0])
        else:
            self._short_at = self.num_blocks - 1

    def blocks(self, lo: int, hi: int) -> np.ndarray:
        """Numbers of the blocks at positions ``[lo, hi)`` of the permutation (int64)."""
        if self._table is not None:
            return self._table[lo:hi].astype(np.int64)
        positions = np.arange(lo, hi, dtype=np.int64)
        return positions if self._feistel is None else self._feistel(positions)

    def _offset(self, p: int) -> int:
        """Sequence position of the first record of the ``p``-th block read."""
        return p * self.block - (self.block - self._tail) * (p > self._short_at)

    def _locate(self, q: int) -> int:
        """Which block read (its position in the permutation) holds sequence position q."""
        short = self._short_at * self.block
        if q < short:
            return q // self.block
        if q < short + self._tail:
            return self._short_at
        return (q - self._tail) // self.block + 1

    def spans(self, lo: int, hi: int) -> np.ndarray:
        """Storage ranges of sequence positions ``[lo, hi)``, one per block touched."""
        if lo >= hi:
            return np.zeros((0, 2), np.int64)
        if self._table is None and self._feistel is None:  # storage order
            return np.array([[lo, hi]], np.int64)
        first, last = self._locate(lo), self._locate(hi - 1)
        starts = self.blocks(first, last + 1) * self.block
        out = np.stack([starts, np.minimum(starts + self.block, self.length)], axis=1)
        out[-1, 1] = starts[-1] + hi - self._offset(last)
        out[0, 0] += lo - self._offset(first)
        return out


class Subsequence:
    """The records of ``order`` that lie in given storage ranges, in ``order``'s order.

    Parameters
    ----------
    order
        The epoch's full sequence.
    ranges
        ``(k, 2)`` sorted, disjoint ``[start, stop)`` storage ranges of the records kept.
    """

    def __init__(self, order: BlockOrder, ranges: np.ndarray) -> None:
        self.order = order
        self.ranges = ranges
        lengths = ranges[:, 1] - ranges[:, 0]
        self._before = np.concatenate([[0], np.cumsum(lengths)])  # kept below ranges[i, 0]
        ends = np.minimum(np.arange(order.num_blocks + 1) * order.block, order.length)
        per_block = np.diff(self._kept_below(ends))
        read = per_block[order.blocks(0, order.num_blocks)]
        self._read_before = np.concatenate([[0], np.cumsum(read)])
        self.length = int(self._read_before[-1])

    def _kept_below(self, x: np.ndarray) -> np.ndarray:
        """How many kept records lie below each storage position in ``x``."""
        if not len(self.ranges):
            return np.zeros_like(x)
        i = np.searchsorted(self.ranges[:, 0], x, side="right") - 1
        inside = np.clip(x - self.ranges[i, 0], 0, self.ranges[i, 1] - self.ranges[i, 0])
        return np.where(i >= 0, self._before[i] + inside, 0)

    def spans(self, lo: int, hi: int) -> np.ndarray:
        """Storage ranges of positions ``[lo, hi)`` of the subsequence, in order."""
        if lo >= hi:
            return np.zeros((0, 2), np.int64)
        first = int(np.searchsorted(self._read_before, lo, side="right")) - 1
        stop = int(np.searchsorted(self._read_before, hi, side="left"))
        order = self.order
        starts = order.blocks(first, stop) * order.block
        blocks = np.stack([starts, np.minimum(starts + order.block, order.length)], axis=1)
        kept = intersect(blocks, self.ranges)
        skip = lo - int(self._read_before[first])
        return cut(kept, np.array([[skip, skip + hi - lo]]))


def wrapped(seq: EpochSequence, lo: int, hi: int) -> np.ndarray:
    """Positions ``[lo, hi)`` of ``seq`` repeated end to end, as spans."""
    parts = [np.zeros((0, 2), np.int64)]
    while lo < hi:
        lap, start = divmod(lo, seq.length)
        stop = min(hi - lap * seq.length, seq.length)
        parts.append(seq.spans(start, stop))
        lo += stop - start
    return np.concatenate(parts)

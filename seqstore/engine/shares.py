"""How a rank's share of an epoch is cut among its workers and batches: counts per rank,
batches per rank, each worker's part of a batch, and each worker's plan (see
:mod:`seqstore.engine.order` for the scheme)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .order import EpochSequence, wrapped
from .spans import Span, cut, merge

__all__ = ["WorkerPlan", "num_batches", "part_bounds", "rank_share", "worker_plan"]


def rank_share(n: int, world: int, rank: int, drop_last: bool, pad: bool = True) -> Span:
    """Rank ``rank``'s contiguous share ``(start, count)`` of an epoch's sequence of ``n``.

    ``drop_last``: ``n // world`` each, the tail left out. Else with ``pad``:
    ``ceil(n / world)`` each, the last wrapping around to the start (as
    ``DistributedSampler`` pads). Without ``pad``: every record once, the first
    ``n % world`` ranks one more (exact evaluation; batch counts may differ by one)."""
    if drop_last or pad:
        m = n // world if drop_last else math.ceil(n / world)
        return rank * m, m
    lo, hi = part_bounds(n, world, rank)
    return lo, hi - lo


def num_batches(
    n: int, *, world: int, batch_size: int, drop_last: bool, rank: int = 0, pad: bool = True
) -> int:
    """Batches rank ``rank`` yields per epoch: ``len(loader)`` (every rank's with ``pad``
    or ``drop_last``; rank 0 has the most)."""
    m = rank_share(n, world, rank, drop_last, pad)[1]
    return m // batch_size if drop_last else math.ceil(m / batch_size)


def part_bounds(size: int, workers: int, worker: int) -> Span:
    """Rows ``[lo, hi)`` of a batch of ``size`` samples that worker ``worker`` makes when
    every batch is split over ``workers`` workers: nearly equal parts, the first
    ``size % workers`` of them one sample longer, in worker order."""
    base, extra = divmod(size, workers)
    lo = worker * base + min(worker, extra)
    return lo, lo + base + (worker < extra)


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank does in one epoch.

    Attributes
    ----------
    spans : numpy.ndarray
        ``(k, 2)`` int64 storage ranges to read, in order; their lengths sum to
        ``num_samples``.
    num_samples : int
        Samples this worker yields.
    batches : range
        Rank-local indices of the batches this worker yields (whole, or its part of each
        with ``split``), in order.
    last_batch_size : int
        Samples of this worker's final item (the short batch, or its part of it).
    item_size : int
        Samples of each of its other items (``batch_size``, or its part of a full batch).
    """

    spans: np.ndarray
    num_samples: int
    batches: range
    last_batch_size: int
    item_size: int

    def samples_before(self, batch: int) -> int:
        """Samples this worker yields in the rank's batches before ``batch``."""
        done = len(range(self.batches.start, min(batch, self.batches.stop), self.batches.step))
        short = self.item_size - self.last_batch_size if done == len(self.batches) else 0
        return max(done * self.item_size - short, 0)


def _items(
    total: int, full: int, last: int, worker: int, workers: int, split: bool
) -> tuple[range, int, int]:
    """A worker's items in a rank's epoch of ``total`` batches, ``full`` samples each but
    the last (``last``): (the batches it yields of, its item size, its last item's size)."""
    if not split:
        mine = range(worker, total, workers)
        owns_last = total and (total - 1) % workers == worker
        return mine, full, last if owns_last else full
    lo, hi = part_bounds(full, workers, worker)
    lo_last, hi_last = part_bounds(last, workers, worker)
    if hi == lo or not total:
        return range(0), 0, 0
    if hi_last == lo_last:  # an empty part of the short last batch is not yielded
        return range(total - 1), hi - lo, hi - lo
    return range(total), hi - lo, hi_last - lo_last


def worker_plan(
    seq: EpochSequence,
    *,
    shuffle: bool,
    rank: int,
    world: int,
    worker: int,
    workers: int,
    batch_size: int,
    drop_last: bool,
    split: bool = False,
    pad: bool = True,
) -> WorkerPlan:
    """The spans and batches of worker ``worker`` of rank ``rank`` over the sequence ``seq``.

    See the module docstring for the scheme; ``split`` (with ``shuffle`` only) makes every
    batch of parts from every worker; ``pad`` as in :func:`rank_share`. Every argument is
    validated; the result is the same for the same arguments on any machine.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is outside worker count {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if split and not shuffle:
        raise ValueError("split batches need shuffle: storage order is whole batches")
    n = seq.length
    first, m = rank_share(n, world, rank, drop_last, pad)
    total = num_batches(
        n, world=world, batch_size=batch_size, drop_last=drop_last, rank=rank, pad=pad
    )
    # Samples the rank actually yields: whole batches, plus the short last one if kept.
    used = total * batch_size if drop_last else m
    last = used - (total - 1) * batch_size if total else 0  # the rank's last batch

    def count(v: int) -> int:
        mine, size, final = _items(total, batch_size, last, v, workers, split)
        return len(mine) * size - (size - final) if mine else 0

    mine, size, final = _items(total, batch_size, last, worker, workers, split)
    if not mine:
        return WorkerPlan(np.zeros((0, 2), np.int64), 0, mine, 0, 0)
    if shuffle:
        start = sum(count(v) for v in range(worker))
        pieces = np.array([[start, start + count(worker)]], np.int64)
    else:
        lo = np.arange(worker, total, workers, dtype=np.int64) * batch_size
        pieces = np.stack([lo, np.minimum(lo + batch_size, used)], axis=1)
    # Only the stretch of the rank's slice this worker reads, wrapping around to pad.
    cover = first + int(pieces[0, 0]), first + int(pieces[-1, 1])
    spans = cut(wrapped(seq, *cover), pieces - pieces[0, 0])
    return WorkerPlan(merge(spans), count(worker), mine, final, size)

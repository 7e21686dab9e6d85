"""Which records each worker of each rank reads in an epoch, and in what order.

Pure functions of (record count, block size, seed, epoch, rank, world size, worker, worker
count, batch size, drop_last): no I/O, no torch. The scheme:

1. The store is cut into contiguous blocks of ``block`` records (a few MB each), so that
   every read is long and sequential. With ``shuffle`` the block order is permuted per
   (seed, epoch); the concatenated blocks form the epoch's global sequence.
2. Rank ``r`` takes the ``r``-th contiguous slice of that sequence. All ranks get the same
   number of samples: without ``drop_last`` the sequence wraps around to pad the last rank
   (as ``DistributedSampler`` does); with it, the tail is dropped. So every rank runs the
   same number of batches and DDP never waits on a rank that ran out.
3. Within a rank, batch ``j`` belongs to worker ``j % workers``, the order in which
   ``torch.utils.data.DataLoader`` collects batches from its workers. With ``shuffle`` each
   worker reads one contiguous run of the rank's slice, as many samples as its batches
   hold, and mixes them with its own seeded shuffle buffer (:mod:`seqstore.engine.shuffle`).
   Without it each worker reads exactly the records of its own batches, so that the
   batches, collected round-robin, come out in storage order.

Only the last batch of a rank can be short (without ``drop_last``), and it is the last
batch of the worker that owns it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Span",
    "WorkerPlan",
    "block_order",
    "iter_indices",
    "num_batches",
    "rank_sample_count",
    "worker_plan",
]

Span = tuple[int, int]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]))


def block_order(n: int, block: int, *, seed: int, epoch: int, shuffle: bool) -> list[Span]:
    """The epoch's blocks, in the order they are read.

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

    Returns
    -------
    list of (start, stop)
        Contiguous, disjoint ranges covering ``range(n)``.
    """
    if n < 0 or block < 1:
        raise ValueError(f"need n >= 0 and block >= 1, got n={n}, block={block}")
    spans = [(start, min(start + block, n)) for start in range(0, n, block)]
    if shuffle and len(spans) > 1:
        perm = _rng(seed, epoch, 0x5EB1).permutation(len(spans))
        spans = [spans[i] for i in perm]
    return spans


def iter_indices(spans: list[Span], skip: int = 0) -> Iterator[int]:
    """Indices of ``spans`` in read order, starting after the first ``skip``."""
    for start, stop in spans:
        if skip >= stop - start:
            skip -= stop - start
            continue
        yield from range(start + skip, stop)
        skip = 0


def rank_sample_count(n: int, world: int, drop_last: bool) -> int:
    """Samples each rank sees per epoch (the same for every rank)."""
    return n // world if drop_last else math.ceil(n / world)


def num_batches(n: int, *, world: int, batch_size: int, drop_last: bool) -> int:
    """Batches each rank yields per epoch: ``len(loader)``."""
    m = rank_sample_count(n, world, drop_last)
    return m // batch_size if drop_last else math.ceil(m / batch_size)


def _take(spans: list[Span], lo: int, hi: int) -> list[Span]:
    """Positions ``[lo, hi)`` of the sequence that ``spans`` concatenate, as spans."""
    out: list[Span] = []
    pos = 0
    for start, stop in spans:
        length = stop - start
        a, b = max(lo - pos, 0), min(hi - pos, length)
        if a < b:
            out.append((start + a, start + b))
        pos += length
        if pos >= hi:
            break
    return out


def _merge(spans: list[Span]) -> list[Span]:
    """Join spans that continue each other, so a read never stops where it need not."""
    out: list[Span] = []
    for span in spans:
        if out and out[-1][1] == span[0]:
            out[-1] = (out[-1][0], span[1])
        else:
            out.append(span)
    return out


@dataclass(frozen=True)
class WorkerPlan:
    """What one worker of one rank does in one epoch.

    Attributes
    ----------
    spans : list of (start, stop)
        Storage ranges to read, in order; their lengths sum to ``num_samples``.
    num_samples : int
        Samples this worker yields.
    batches : list of int
        Rank-local indices of the batches this worker yields, in order
        (``worker, worker + workers, ...``).
    last_batch_size : int
        Size of this worker's final batch (``batch_size`` unless it owns the short one).
    """

    spans: list[Span]
    num_samples: int
    batches: list[int]
    last_batch_size: int


def worker_plan(
    n: int,
    *,
    block: int,
    seed: int,
    epoch: int,
    shuffle: bool,
    rank: int,
    world: int,
    worker: int,
    workers: int,
    batch_size: int,
    drop_last: bool,
) -> WorkerPlan:
    """The spans and batches of worker ``worker`` of rank ``rank`` in ``epoch``.

    See the module docstring for the scheme. Every argument is validated; the result is the
    same for the same arguments on any machine.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is outside world size {world}")
    if not 0 <= worker < workers:
        raise ValueError(f"worker {worker} is outside worker count {workers}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    blocks = block_order(n, block, seed=seed, epoch=epoch, shuffle=shuffle)
    m = rank_sample_count(n, world, drop_last)
    total_batches = num_batches(n, world=world, batch_size=batch_size, drop_last=drop_last)
    # Samples the rank actually yields: whole batches, plus the short last one if kept.
    used = total_batches * batch_size if drop_last else m
    if m * world > n:  # pad by wrapping around the epoch's sequence (more than once if tiny)
        repeats, rest = divmod(m * world, n)
        blocks = blocks * repeats + _take(blocks, 0, rest)
    rank_spans = _take(blocks, rank * m, rank * m + used)

    mine = list(range(worker, total_batches, workers))
    sizes = [
        min(batch_size, used - j * batch_size) for j in range(total_batches)
    ]  # only the last can be short
    count = sum(sizes[j] for j in mine)
    if shuffle:
        start = sum(sizes[j] for j in range(total_batches) if j % workers < worker)
        spans = _take(rank_spans, start, start + count)
    else:
        rank_spans = _merge(rank_spans)  # one span, two when padding wraps around
        spans = []
        for j in mine:
            spans += _take(rank_spans, j * batch_size, j * batch_size + sizes[j])
    return WorkerPlan(
        spans=_merge(spans),
        num_samples=count,
        batches=mine,
        last_batch_size=sizes[mine[-1]] if mine else 0,
    )

"""The epoch plan: every fact that fixes which records a loader yields, and in what order.

:class:`EpochSpec` is made once, from the loader's settings and the store, and is all the
engine needs: :func:`worker_order` turns it into the exact sequence of store indices a
worker emits in an epoch, the shuffle buffer's decisions included, and :func:`rank_order`
into the sequence a rank's loader yields. The Loader's workers, the resume of an
interrupted epoch, the benchmark's shuffle-quality figure and the tests all draw the order
from here, so none of them can drift from what the Loader does.

An epoch interrupted on one shape (ranks, workers, batch size) and resumed on another runs
over the records it had not delivered: :func:`remaining_after` finds them from the batch
count of any one rank (every rank runs the same number of batches, so one rank's count is
every rank's), and every function here takes them as ``remaining``.

Pure: no I/O, no torch.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from .mix import MixSequence
from .order import BlockOrder, EpochSequence, Subsequence
from .remaining import Remaining
from .shares import WorkerPlan, num_batches, rank_share, worker_plan
from .shuffle import ShuffleBuffer
from .spans import iter_indices

__all__ = [
    "SCHEME",
    "EpochSettings",
    "EpochSpec",
    "Remaining",
    "WorkerEpoch",
    "epoch_sequence",
    "mix_sequence",
    "rank_order",
    "worker_order",
]


SCHEME = 2
"""The shuffle scheme of the loaders this seqstore makes (see :class:`EpochSpec`)."""


class EpochSettings(Protocol):
    """The settings :meth:`EpochSpec.from_config` reads (a
    :class:`~seqstore.config.LoaderConfig` has them all)."""

    @property
    def shuffle(self) -> bool: ...
    @property
    def seed(self) -> int: ...
    @property
    def shuffle_buffer(self) -> int | None: ...
    @property
    def shuffle_buffer_mb(self) -> float: ...
    @property
    def block_mb(self) -> float: ...
    @property
    def num_workers(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def drop_last(self) -> bool: ...
    @property
    def pad_ranks(self) -> bool: ...


@dataclass(frozen=True)
class EpochSpec:
    """What fixes a loader's epochs: with an epoch number, the exact order of every worker.

    Parameters
    ----------
    num_records
        Records in the store.
    block
        Records per sequential read.
    capacity
        Shuffle buffer size of one worker, in records; 1 when not shuffling.
    shuffle
        Permute the blocks per epoch and mix records in the shuffle buffer.
    seed
        Fixes the block order, the shuffle buffer and the augmentation of every epoch.
    rank, world_size
        This process's rank, and the number of ranks sharing each epoch.
    workers
        Worker processes per rank (1 when loading in the main process).
    batch_size, drop_last
        As in :class:`~seqstore.config.LoaderConfig`.
    pad
        Without ``drop_last``, pad the ranks' shares to one length by wrapping around
        (``pad_ranks`` of the config); False: every record once, ranks differing by up to
        one batch.
    mix
        For a loader of several sources: each source's size and the records it gives per
        epoch. ``num_records`` is then the epoch's size, and its records the positions of
        the epoch's :class:`~seqstore.engine.mix.MixSequence` (see :func:`mix_sequence`).
    scheme
        How the shuffle mixes, :data:`SCHEME` for every loader this seqstore makes. 2: each
        worker's buffer fills before its first emission. 1 (the order of seqstore's loader
        states up to version 4, kept so they still resume): emission begins at 256
        buffered records, one for every two read until the buffer is full.
    split
        Every batch takes one part from each worker's stream
        (:func:`~seqstore.engine.shares.part_bounds`), instead of each worker yielding whole
        batches: a batch then draws from the rank's whole buffer. Shuffled loaders over a
        store whose labels come in runs set it (:func:`seqstore.mixcheck.fit_blocks`); a
        store already mixed gains nothing from it, and each item costs the DataLoader the
        same whatever its size.

    Raises
    ------
    ValueError
        A value out of its range (a count below 1, a rank outside the world, ...).
    """

    num_records: int
    block: int
    capacity: int
    shuffle: bool
    seed: int
    rank: int
    world_size: int
    workers: int
    batch_size: int
    drop_last: bool
    scheme: int = 2
    split: bool = False
    pad: bool = True
    mix: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    def __post_init__(self) -> None:
        if self.mix is not None:  # a state saved as JSON gives lists
            sizes, counts = self.mix
            object.__setattr__(self, "mix", (tuple(sizes), tuple(counts)))
            if sum(counts) != self.num_records:
                raise ValueError(f"the mix's counts sum to {sum(counts)}, not {self.num_records}")
        if self.num_records < 0 or self.seed < 0:
            raise ValueError(
                f"num_records and seed must be >= 0, got {self.num_records}, {self.seed}"
            )
        for name in ("block", "capacity", "world_size", "workers", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside world size {self.world_size}")
        if not self.shuffle and self.capacity != 1:
            raise ValueError(f"capacity must be 1 without shuffle, got {self.capacity}")
        if self.scheme not in (1, SCHEME):
            raise ValueError(f"scheme must be 1 or {SCHEME}, got {self.scheme}")
        if self.split and not (self.shuffle and self.scheme >= 2):
            raise ValueError("split batches need shuffle and scheme 2")

    def parts(self, size: int) -> int:
        """Items (one per worker that has a part) that make a batch of ``size`` samples."""
        return min(self.workers, size) if self.split else 1

    @classmethod
    def from_config(
        cls,
        config: EpochSettings,
        *,
        num_records: int,
        mean_record_bytes: float,
        rank: int = 0,
        world_size: int = 1,
        by_record: bool = False,
        mix: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> EpochSpec:
        """The spec of a loader with ``config`` over a store of ``num_records`` records.

        ``block_mb`` and ``shuffle_buffer_mb`` are converted to records with the store's
        ``mean_record_bytes``; ``shuffle_buffer`` (records), when set, takes the place of
        the latter. The buffer is a rank's, shared out between its workers.

        ``by_record``: the records are files of their own (an image folder), as cheap to
        read one by one as in blocks. A shuffled epoch is then a uniform permutation of the
        records (blocks of one record) and needs no buffer. ``mix``: the sizes and counts
        of a mix's sources (``num_records`` is then the epoch's size, the counts' sum).
        """
        workers = max(1, config.num_workers)
        capacity = config.shuffle_buffer or int(config.shuffle_buffer_mb * 1e6 / mean_record_bytes)
        block = max(1, int(config.block_mb * 1e6 / mean_record_bytes))
        if by_record and config.shuffle:
            block = capacity = 1
        return cls(
            num_records=num_records,
            block=block,
            capacity=max(1, capacity // workers) if config.shuffle else 1,
            shuffle=config.shuffle,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
            workers=workers,
            batch_size=config.batch_size,
            drop_last=config.drop_last,
            pad=config.pad_ranks,
            mix=mix,
        )

    @property
    def num_batches(self) -> int:
        """Batches this rank yields per epoch (every rank's, but without ``pad``)."""
        return self.batches_over(None)

    def batches_over(self, remaining: Remaining | None, rank: int | None = None) -> int:
        """Batches rank ``rank`` (default: this one) yields in an epoch over ``remaining``
        (None: every record)."""
        return num_batches(
            self.num_records if remaining is None else remaining.count,
            world=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
            rank=self.rank if rank is None else rank,
            pad=self.pad,
        )

    def batch_size_of(self, batch: int, remaining: Remaining | None) -> int:
        """Samples of this rank's batch ``batch`` of an epoch over ``remaining``: all but
        the last are ``batch_size``."""
        total = self.batches_over(remaining)
        if batch < total - 1:
            return self.batch_size
        n = self.num_records if remaining is None else remaining.count
        used = rank_share(n, self.world_size, self.rank, self.drop_last, self.pad)[1]
        return min(self.batch_size, used - (total - 1) * self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        """The fields by name: what a saved loader state must match to be resumed."""
        return dataclasses.asdict(self)


def epoch_sequence(
    spec: EpochSpec, epoch: int, remaining: Remaining | None = None
) -> EpochSequence:
    """The records of ``epoch`` in read order, before ranks and workers share them out:
    every record, or only ``remaining``."""
    order = BlockOrder(
        spec.num_records, spec.block, seed=spec.seed, epoch=epoch, shuffle=spec.shuffle
    )
    return order if remaining is None else Subsequence(order, remaining.ranges)


def mix_sequence(spec: EpochSpec, epoch: int) -> MixSequence:
    """The sources' records behind the positions of ``epoch`` of a mix's ``spec``."""
    if spec.mix is None:
        raise ValueError("not the spec of a mix")
    sizes, counts = spec.mix
    return MixSequence(sizes, counts, spec.block, seed=spec.seed, epoch=epoch, shuffle=spec.shuffle)


@dataclass(frozen=True)
class WorkerEpoch:
    """One worker of one rank in one epoch of ``spec``: what it reads and how it mixes it.

    Parameters
    ----------
    spec
        The loader's epoch spec.
    epoch, rank, worker
        Which epoch, rank and worker (``worker`` counts batches round-robin from 0, as the
        DataLoader collects them).
    remaining
        Run over these records only (the rest of an interrupted epoch); None: all.
    """

    spec: EpochSpec
    epoch: int
    rank: int
    worker: int
    remaining: Remaining | None = None

    @cached_property
    def plan(self) -> WorkerPlan:
        """The storage spans this worker reads and the batches it yields."""
        s = self.spec
        return worker_plan(
            epoch_sequence(s, self.epoch, self.remaining),
            shuffle=s.shuffle,
            rank=self.rank,
            world=s.world_size,
            worker=self.worker,
            workers=s.workers,
            batch_size=s.batch_size,
            drop_last=s.drop_last,
            split=s.split,
            pad=s.pad,
        )

    def shuffle_buffer(self) -> ShuffleBuffer:
        """A fresh shuffle buffer over the plan's indices: its emissions are the order."""
        # Keyed by (seed, epoch, rank, worker) so each of them changes the mix.
        key = [self.spec.seed, self.epoch, self.rank, self.worker]
        warmup = None if self.spec.scheme >= 2 else 256
        return ShuffleBuffer(iter_indices(self.plan.spans), self.spec.capacity, key, warmup)

    def order(self) -> np.ndarray:
        """Store indices in the order this worker emits them (int64)."""
        return np.fromiter(self.shuffle_buffer(), np.int64, count=self.plan.num_samples)


def worker_order(
    spec: EpochSpec, epoch: int, rank: int, worker: int, remaining: Remaining | None = None
) -> np.ndarray:
    """The store indices worker ``worker`` of rank ``rank`` emits in ``epoch``, in order.

    Parameters
    ----------
    spec
        The loader's epoch spec (its own ``rank`` is not used: any rank can be asked for).
    epoch, rank, worker
        Which epoch, rank and worker.
    remaining
        The records of an epoch resumed on another shape; None: a whole epoch.

    Returns
    -------
    numpy.ndarray
        int64 indices, the shuffle buffer's decisions included; its batches are
        consecutive runs of ``spec.batch_size``.
    """
    return WorkerEpoch(spec, epoch, rank, worker, remaining).order()


def rank_order(
    spec: EpochSpec,
    epoch: int,
    rank: int,
    remaining: Remaining | None = None,
    batches: int | None = None,
) -> np.ndarray:
    """The store indices rank ``rank``'s loader yields in ``epoch``, batch after batch.

    The workers' items taken round-robin, as the DataLoader collects them (whole batches,
    or with ``spec.split`` one part of each batch from every worker); over ``remaining``
    only, when given; the first ``batches`` batches only, when given (each worker's buffer
    is then replayed only as far as they need).
    """
    works = [WorkerEpoch(spec, epoch, rank, w, remaining) for w in range(spec.workers)]
    total = spec.batches_over(remaining, rank)
    if batches is not None:
        total = min(total, batches)
    # Samples each worker emits in those batches: its items among them, whole or parts.
    need = [work.plan.samples_before(total) for work in works]
    orders = [
        np.fromiter(itertools.islice(work.shuffle_buffer(), n), np.int64, count=n)
        for work, n in zip(works, need, strict=True)
    ]
    parts = []
    if spec.split:  # batch b is every worker's next part, in worker order
        done = [0] * spec.workers
        for _ in range(total):
            for w, work in enumerate(works):
                take = min(work.plan.item_size, len(orders[w]) - done[w])
                parts.append(orders[w][done[w] : done[w] + take])
                done[w] += take
    else:
        size = spec.batch_size
        for b in range(total):
            k = b // spec.workers
            parts.append(orders[b % spec.workers][k * size : (k + 1) * size])
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)

"""The epoch plan: every fact that fixes which records a loader yields, and in what order.

:class:`EpochSpec` is made once, from the loader's settings and the store, and is all the
engine needs: :func:`worker_order` turns it into the exact sequence of store indices a
worker emits in an epoch, the shuffle buffer's decisions included, and :func:`rank_order`
into the sequence a rank's loader yields. The Loader's workers, the resume of an
interrupted epoch, the benchmark's shuffle-quality figure and the tests all draw the order
from here, so none of them can drift from what the Loader does.

Pure: no I/O, no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

import numpy as np

from .order import WorkerPlan, iter_indices, num_batches, worker_plan
from .shuffle import ShuffleBuffer

__all__ = ["EpochSettings", "EpochSpec", "WorkerEpoch", "rank_order", "worker_order"]


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

    def __post_init__(self) -> None:
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

    @classmethod
    def from_config(
        cls,
        config: EpochSettings,
        *,
        num_records: int,
        mean_record_bytes: float,
        rank: int = 0,
        world_size: int = 1,
    ) -> EpochSpec:
        """The spec of a loader with ``config`` over a store of ``num_records`` records.

        ``block_mb`` and ``shuffle_buffer_mb`` are converted to records with the store's
        ``mean_record_bytes``; ``shuffle_buffer`` (records), when set, takes the place of
        the latter. The buffer is a rank's, shared out between its workers.
        """
        workers = max(1, config.num_workers)
        capacity = config.shuffle_buffer or int(config.shuffle_buffer_mb * 1e6 / mean_record_bytes)
        return cls(
            num_records=num_records,
            block=max(1, int(config.block_mb * 1e6 / mean_record_bytes)),
            capacity=max(1, capacity // workers) if config.shuffle else 1,
            shuffle=config.shuffle,
            seed=config.seed,
            rank=rank,
            world_size=world_size,
            workers=workers,
            batch_size=config.batch_size,
            drop_last=config.drop_last,
        )

    @property
    def num_batches(self) -> int:
        """Batches each rank yields per epoch (the same on every rank)."""
        return num_batches(
            self.num_records,
            world=self.world_size,
            batch_size=self.batch_size,
            drop_last=self.drop_last,
        )

    def as_dict(self) -> dict[str, Any]:
        """The fields by name: what a saved loader state must match to be resumed."""
        return dataclasses.asdict(self)


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
    """

    spec: EpochSpec
    epoch: int
    rank: int
    worker: int

    @cached_property
    def plan(self) -> WorkerPlan:
        """The storage spans this worker reads and the batches it yields."""
        s = self.spec
        return worker_plan(
            s.num_records,
            block=s.block,
            seed=s.seed,
            epoch=self.epoch,
            shuffle=s.shuffle,
            rank=self.rank,
            world=s.world_size,
            worker=self.worker,
            workers=s.workers,
            batch_size=s.batch_size,
            drop_last=s.drop_last,
        )

    def shuffle_buffer(self) -> ShuffleBuffer:
        """A fresh shuffle buffer over the plan's indices: its emissions are the order."""
        # Keyed by (seed, epoch, rank, worker) so each of them changes the mix.
        key = [self.spec.seed, self.epoch, self.rank, self.worker]
        return ShuffleBuffer(iter_indices(self.plan.spans), self.spec.capacity, key)

    def order(self) -> np.ndarray:
        """Store indices in the order this worker emits them (int64)."""
        return np.fromiter(self.shuffle_buffer(), np.int64, count=self.plan.num_samples)


def worker_order(spec: EpochSpec, epoch: int, rank: int, worker: int) -> np.ndarray:
    """The store indices worker ``worker`` of rank ``rank`` emits in ``epoch``, in order.

    Parameters
    ----------
    spec
        The loader's epoch spec (its own ``rank`` is not used: any rank can be asked for).
    epoch, rank, worker
        Which epoch, rank and worker.

    Returns
    -------
    numpy.ndarray
        int64 indices, the shuffle buffer's decisions included; its batches are
        consecutive runs of ``spec.batch_size``.
    """
    return WorkerEpoch(spec, epoch, rank, worker).order()


def rank_order(spec: EpochSpec, epoch: int, rank: int) -> np.ndarray:
    """The store indices rank ``rank``'s loader yields in ``epoch``, batch after batch.

    The workers' batches taken round-robin, as the DataLoader collects them.
    """
    size = spec.batch_size
    orders = [worker_order(spec, epoch, rank, w) for w in range(spec.workers)]
    batches = [
        orders[b % spec.workers][(b // spec.workers) * size : (b // spec.workers + 1) * size]
        for b in range(spec.num_batches)
    ]
    return np.concatenate(batches) if batches else np.zeros(0, np.int64)

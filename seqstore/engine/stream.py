"""One worker's epoch: read its spans block by block, shuffle, transform, batch.

Format-agnostic: it only calls ``Reader.read_block``. The order is the epoch plan's
(:mod:`seqstore.engine.plan`), decided on indices by its
:class:`~seqstore.engine.shuffle.ShuffleBuffer`; :class:`BlockFetcher` keeps the
records of the indices the buffer holds and reads the next block when the buffer pulls
past what has been read. Memory is therefore the shuffle buffer plus one block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..records import Record
from .order import Span, iter_spans
from .plan import WorkerEpoch

__all__ = ["BlockFetcher", "RawBatch", "iter_batches", "sample_rng"]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one record in one epoch.

    Keyed by the record, not by its position in a worker's stream, so augmentation does not
    depend on the number of workers or ranks, and a resumed epoch draws the same crops.
    """
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


class BlockFetcher:
    """Records by index, read a block at a time in span order.

    Parameters
    ----------
    read_block
        The reader's ``read_block``.
    spans
        Storage ranges in read order.
    block
        Records per read.
    skip
        Start after this many records of the spans (used by resume).
    """

    def __init__(
        self,
        read_block: Callable[[int, int], list[Record]],
        spans: Iterable[Span],
        block: int,
        skip: int = 0,
    ) -> None:
        self._read_block = read_block
        self._pieces = self._iter_pieces(spans, block, skip)
        self._records: dict[int, Record] = {}
        self.blocks_read = 0

    @staticmethod
    def _iter_pieces(spans: Iterable[Span], block: int, skip: int) -> Iterator[Span]:
        for start, stop in spans:
            if skip >= stop - start:
                skip -= stop - start
                continue
            start += skip
            skip = 0
            for lo in range(start, stop, block):
                yield lo, min(lo + block, stop)

    def __len__(self) -> int:
        return len(self._records)

    def _load(self, start: int, stop: int) -> None:
        for offset, record in enumerate(self._read_block(start, stop)):
            self._records[start + offset] = record
        self.blocks_read += 1

    def get(self, index: int) -> Record:
        """The record at ``index``, reading ahead block by block until it is loaded."""
        while index not in self._records:
            piece = next(self._pieces, None)
            if piece is None:
                raise KeyError(f"record {index} is not in this worker's spans")
            self._load(*piece)
        return self._records.pop(index)

    def preload(self, indices: list[int]) -> None:
        """Load records out of read order (the shuffle buffer's content on resume)."""
        runs: list[list[int]] = []
        for i in sorted(indices):
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        for start, stop in runs:
            self._load(start, stop)


@dataclass
class RawBatch:
    """One batch as a worker produces it, before collation into tensors.

    Attributes
    ----------
    samples : list
        Transformed samples (arrays of equal shape for the built-in pipelines).
    labels : numpy.ndarray
        int64 labels.
    indices : numpy.ndarray
        int64 store positions of the samples.
    batch : int
        Rank-local batch number.
    """

    samples: list[Any]
    labels: np.ndarray
    indices: np.ndarray
    batch: int


def iter_batches(
    read_block: Callable[[int, int], list[Record]],
    work: WorkerEpoch,
    transform: Callable[[Record, np.random.Generator], Any],
    *,
    skip_batches: int = 0,
) -> Iterator[RawBatch]:
    """Yield the batches of one worker's epoch, skipping its first ``skip_batches``.

    The order is :func:`~seqstore.engine.plan.worker_order`'s for ``work``. A resume replays
    only the shuffle decisions of the skipped samples, then reads the records still in the
    buffer and continues: nothing skipped is read or decoded.
    """
    plan, spec = work.plan, work.spec
    batch_size = spec.batch_size
    skip_samples = min(skip_batches * batch_size, plan.num_samples)
    order = work.shuffle_buffer()
    order.skip(skip_samples)
    fetcher = BlockFetcher(read_block, iter_spans(plan.spans), spec.block, skip=order.pulled)
    fetcher.preload(order.buffer)
    remaining = plan.num_samples - skip_samples
    for batch in plan.batches[skip_batches:]:
        size = min(batch_size, remaining)
        remaining -= size
        samples = []
        labels = np.empty(size, np.int64)
        indices = np.empty(size, np.int64)
        for i in range(size):
            index = next(order)
            record = fetcher.get(index)
            samples.append(transform(record, sample_rng(spec.seed, work.epoch, index)))
            labels[i] = record.label
            indices[i] = index
        yield RawBatch(samples, labels, indices, batch)

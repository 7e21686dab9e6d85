"""One worker's epoch: read its spans block by block, shuffle, transform, batch.

Format-agnostic: it only calls ``Reader.read_block``. The order is the epoch plan's
(:mod:`seqstore.engine.plan`), decided on indices by its
:class:`~seqstore.engine.shuffle.ShuffleBuffer`; :class:`BlockFetcher` keeps the
records of the indices the buffer holds and reads the next block when the buffer pulls
past what has been read, while a background thread already reads the one after it. Memory
is therefore the shuffle buffer plus two blocks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..records import Record
from .plan import WorkerEpoch
from .shares import part_bounds
from .spans import Span, iter_spans

__all__ = ["BlockFetcher", "RawBatch", "iter_batches", "sample_rng"]


# Records a read-ahead task holds when blocks are single records (see
# BlockFetcher._iter_tasks).
_TASK_RECORDS = 32


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The augmentation generator of one record in one epoch.

    Keyed by the record, not by its position in a worker's stream, so augmentation does not
    depend on the number of workers or ranks, and a resumed epoch draws the same crops.
    """
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index])


class BlockFetcher:
    """Records by index, read a block at a time in span order, the next block in the
    background.

    While the records of one block are transformed, a thread already reads the next one:
    on a slow disk the read then overlaps with the decoding instead of adding to it.
    Readers do their I/O with the GIL released (``pread``, libhdf5, a memory map), so one
    thread is enough.

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
    ahead
        Blocks read ahead of the one being consumed (0: read in the calling thread).
    """

    def __init__(
        self,
        read_block: Callable[[int, int], list[Record]],
        spans: Iterable[Span],
        block: int,
        skip: int = 0,
        ahead: int = 1,
    ) -> None:
        self._read_block = read_block
        self._tasks = self._iter_tasks(spans, block, skip)
        self._records: dict[int, Record] = {}
        # A record read again before its first read was taken (a mix repeats a source).
        self._again: dict[int, list[Record]] = {}
        self._ahead = ahead
        self._pending: deque[Future[list[tuple[int, list[Record]]]]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        self.blocks_read = 0

    @staticmethod
    @staticmethod
    def _iter_tasks(spans: Iterable[Span], block: int, skip: int) -> Iterator[list[Span]]:
        """The reads, in order, a block's worth of records to a task: one block, or the
        pieces of several where spans are shorter (an epoch resumed on another shape), or
        :data:`_TASK_RECORDS` single records of an epoch permuted record by record, so that
        each does not cost a thread hand-off of its own."""
        least = block if block > 1 else _TASK_RECORDS
        task: list[Span] = []
        held = 0
        for start, stop in spans:
            if skip >= stop - start:
                skip -= stop - start
                continue
            start += skip
            skip = 0
            for lo in range(start, stop, block):
                hi = min(lo + block, stop)
                task.append((lo, hi))
                held += hi - lo
                if held >= least:
                    yield task
                    task, held = [], 0
        if task:
            yield task

    def _read(self, task: list[Span]) -> list[tuple[int, list[Record]]]:
        return [(lo, self._read_block(lo, hi)) for lo, hi in task]

    def __len__(self) -> int:
        return len(self._records)

    def _keep(self, start: int, records: list[Record]) -> None:
        kept = self._records
        for offset, record in enumerate(records):
            if start + offset in kept:
                self._again.setdefault(start + offset, []).append(record)
            else:
                kept[start + offset] = record
        self.blocks_read += 1

    def _next_block(self) -> bool:
        """Take in the next read (waiting for it), and start reading ahead."""
        if self._ahead == 0:
            task = next(self._tasks, None)
            if task is None:
                return False
            for start, records in self._read(task):
                self._keep(start, records)
            return True
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="seqstore-read")
        while len(self._pending) <= self._ahead:
            task = next(self._tasks, None)
            if task is None:
                break
            self._pending.append(self._pool.submit(self._read, task))
        if not self._pending:
            self.close()
            return False
        for start, records in self._pending.popleft().result():
            self._keep(start, records)
        return True

    def get(self, index: int) -> Record:
        """The record at ``index``, reading ahead block by block until it is loaded."""
        while index not in self._records:
            if not self._next_block():
                raise KeyError(f"record {index} is not in this worker's spans")
        record = self._records.pop(index)
        again = self._again.get(index)
        if again:
            self._records[index] = again.pop(0)
            if not again:
                del self._again[index]
        return record

    def preload(self, indices: list[int]) -> None:
        """Load records out of read order (the shuffle buffer's content on resume)."""
        runs: list[list[int]] = []
        for i in sorted(indices):
            if runs and runs[-1][1] == i:
                runs[-1][1] = i + 1
            else:
                runs.append([i, i + 1])
        for start, stop in runs:
            self._keep(start, self._read_block(start, stop))

    def close(self) -> None:
        """Stop reading ahead; the thread ends once a read under way is done."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()


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
    offset : int
        Where these samples start in the batch: 0 for a whole batch, else this worker's
        part's first row (:func:`~seqstore.engine.shares.part_bounds`).
    """

    samples: list[Any]
    labels: np.ndarray
    indices: np.ndarray
    batch: int
    offset: int = 0


def iter_batches(
    read_block: Callable[[int, int], list[Record]],
    work: WorkerEpoch,
    transform: Callable[[Record, np.random.Generator], Any],
    *,
    skip_batches: int = 0,
) -> Iterator[RawBatch]:
    """Yield the items of one worker's epoch (whole batches, or its parts of them), skipping
    those of the rank's first ``skip_batches`` batches.

    The order is :func:`~seqstore.engine.plan.worker_order`'s for ``work``. A resume replays
    only the shuffle decisions of the skipped samples, then reads the records still in the
    buffer and continues: nothing skipped is read or decoded.
    """
    plan, spec = work.plan, work.spec
    skip_samples = plan.samples_before(skip_batches)
    order = work.shuffle_buffer()
    order.skip(skip_samples)
    fetcher = BlockFetcher(read_block, iter_spans(plan.spans), spec.block, skip=order.pulled)
    try:
        fetcher.preload(order.buffer)
        remaining = plan.num_samples - skip_samples
        for batch in plan.batches:
            if batch < skip_batches:
                continue
            size = min(plan.item_size, remaining)
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
            offset = 0
            if spec.split:
                whole = spec.batch_size_of(batch, work.remaining)
                offset = part_bounds(whole, spec.workers, work.worker)[0]
            yield RawBatch(samples, labels, indices, batch, offset)
    finally:
        fetcher.close()

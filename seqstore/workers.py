"""What a loader worker process runs, and how the main process hears of its failures.

This is the Loader's worker room: :class:`SampleTransform` turns a record into a sample
(or a :class:`BadSample`), :class:`EpochDataset` is the IterableDataset each worker
iterates (its share of the epoch plan, batched and collated), and errors travel as values:
a worker that meets a bad record or any other seqstore error sends a
:class:`WorkerFailure` in place of a batch, and the main process raises it, so that the
training loop gets the one-line error rather than DataLoader's re-raise with the worker's
traceback. In the main process, :class:`BadRecordLog` counts and warns about the bad
records that batches bring, and :func:`guard_sigchld` and :func:`dead_worker` tell how a
worker that died ended.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import random
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import transforms
from .backends import Reader
from .batches import Affine, Ring, collate
from .config import LoaderConfig
from .engine.plan import EpochSpec, Remaining, WorkerEpoch
from .engine.stream import RawBatch, iter_batches
from .errors import BadRecordError, BadRecordWarning, SeqstoreError
from .records import Record

__all__ = [
    "BadRecord",
    "BadRecordLog",
    "BadSample",
    "EpochDataset",
    "SampleTransform",
    "WorkerFailure",
    "WorkerItem",
    "bad_message",
    "dead_worker",
    "guard_sigchld",
    "replace_bad",
]


@dataclass(frozen=True)
class BadSample:
    """In place of a sample: its record fails its checksum (``decode_error`` None) or
    cannot be decoded (the decoder's message)."""

    key: str
    decode_error: str | None = None


@dataclass(frozen=True)
class WorkerFailure:
    """In place of a batch: the worker stopped on ``error``, which the main process raises."""

    error: SeqstoreError


# A bad record as it travels with its batch: key, store index, decoder message or None.
BadRecord = tuple[str, int, str | None]

# What a worker sends: a batch (images, labels, indices, bad records) or the error it met.
WorkerItem = tuple[Any, np.ndarray, np.ndarray, list[BadRecord]] | WorkerFailure


def bad_message(key: str, index: int, store: str | Path, decode_error: str | None) -> str:
    """What is wrong with record ``key`` (#``index``) of ``store``, and what to do."""
    where = f"record '{key}' (#{index}) of store '{store}'"
    if decode_error is None:
        return (
            f"{where} fails its checksum: the store is damaged; run `seqstore info --verify "
            f"{store}` and rewrite the store, or pass on_error='skip' to load around it"
        )
    return (
        f"{where} cannot be decoded ({decode_error}); rewrite the store from a good copy of "
        "the image, or pass on_error='skip' to load around it"
    )


class SampleTransform:
    """Record + generator -> sample, for every kind of transform a config can name.

    Parameters
    ----------
    cfg
        The loader's config: ``transform`` (None picks ``imagenet_train`` for a shuffled
        loader that is not of the val split, ``imagenet_val`` otherwise), ``image_size``,
        ``resize_size`` and ``image_format``.

    Attributes
    ----------
    pipeline : transforms.Pipeline or None
        The built-in pipeline, if the config names one or passes one.
    user : callable or None
        The user's own callable otherwise (None for ``transform="none"``).
    verify : bool
        Check each record's checksum; set by the Loader, which knows whether checksums
        were stored.
    """

    def __init__(self, cfg: LoaderConfig) -> None:
        spec = cfg.transform
        if spec is None:
            spec = "imagenet_train" if cfg.shuffle and cfg.split != "val" else "imagenet_val"
        named = transforms.NAMED_TRANSFORMS
        self.pipeline: transforms.Pipeline | None = None
        self.user: Callable[[Any], Any] | None = None
        if isinstance(spec, str) and spec in named:
            self.pipeline = named[spec](cfg.image_size, cfg.resize_size)
        elif isinstance(spec, transforms.Pipeline):
            self.pipeline = spec
        elif spec != "none":
            self.user = spec
        self.image_format = cfg.image_format
        self.verify = False

    def __call__(self, record: Record, rng: np.random.Generator) -> Any:
        """The sample of ``record``, or a :class:`BadSample` when the record is bad: it fails
        its checksum, or decoding it (in a built-in pipeline, everything up to the sample)
        raises a seqstore error. A user callable's own exceptions propagate."""
        if self.verify and not record.verify():
            return BadSample(record.key)
        try:
            if self.pipeline is not None:
                return self.pipeline(record.data, rng, name=record.key)
            if self.user is None:  # transform="none": the encoded bytes
                return record.data
            from .imaging.decode import decode, decode_pil

            # User transforms draw from torch's and Python's generators (torchvision does):
            # seed both from the record's generator so augmentation is reproducible. Only
            # the CPU generator: torch.manual_seed would seed every device's too, which
            # costs a hundred times as much, per record.
            seed = int(rng.integers(2**63))
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            image: Any
            if self.image_format == "pil":
                image = decode_pil(record.data, name=record.key)
            else:
                image = decode(record.data, name=record.key)
        except SeqstoreError as err:
            return BadSample(record.key, str(err))
        return self.user(image)

    def probe(self, reader: Reader) -> tuple[tuple[int, ...], torch.dtype] | None:
        """The shape and dtype of the user callable's output for the store's first record,
        if it is one array or tensor, so that same-shaped batches can go through the ring.

        Runs once in the calling process, with torch's and Python's generator states
        restored afterwards and the reader's handles closed (they are opened again in
        each worker). None for any other output, or if the record or the callable fails:
        the epoch meets that failure where it belongs.
        """
        state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                sample = self(reader.read_block(0, 1)[0], np.random.default_rng(0))
        except Exception:  # reported where the epoch meets it, with the record it concerns
            return None
        finally:
            random.setstate(state)
            reader.close()
        if isinstance(sample, torch.Tensor) and not sample.is_complex():
            return tuple(sample.shape), sample.dtype
        if isinstance(sample, np.ndarray) and sample.dtype.kind in "uif":
            return sample.shape, torch.from_numpy(sample[:0].copy()).dtype
        return None


def replace_bad(raw: RawBatch, store: str | Path, skip: bool) -> list[BadRecord]:
    """Put the next good sample of the batch (wrapping around) in place of each bad one, in
    ``raw``, and return the bad records.

    Raises
    ------
    BadRecordError
        A bad record with ``skip`` off, or a batch with no good sample to take from.
    """
    bad = [i for i, s in enumerate(raw.samples) if isinstance(s, BadSample)]
    if not bad:
        return []
    found: list[BadRecord] = [
        (raw.samples[i].key, int(raw.indices[i]), raw.samples[i].decode_error) for i in bad
    ]
    if not skip:
        key, index, decode_error = found[0]
        raise BadRecordError(bad_message(key, index, store, decode_error))
    if len(bad) == len(raw.samples):
        raise BadRecordError(
            f"all {len(bad)} records of batch {raw.batch} of store '{store}' are bad, so none "
            f"can stand in for the others (first: '{found[0][0]}' (#{found[0][1]})); "
            "run `seqstore info --verify` on the store and rewrite it"
        )
    n = len(raw.samples)
    for i in bad:
        j = next(
            k % n for k in range(i + 1, i + n) if not isinstance(raw.samples[k % n], BadSample)
        )
        raw.samples[i] = raw.samples[j]
        raw.labels[i] = raw.labels[j]
        raw.indices[i] = raw.indices[j]
    return found


class EpochDataset(IterableDataset[WorkerItem]):
    """The dataset each worker iterates: its share of the epoch, batched and collated.

    Parameters
    ----------
    reader
        The store, opened lazily in each worker.
    transform
        Record -> sample.
    spec
        The loader's epoch spec.
    ring
        Shared-memory buffers for same-shaped uint8 batches, or None.
    skip_bad
        Replace bad samples (``on_error="skip"``) rather than stop on the first.
    affine
        Normalise uint8 images into float32 batches as they are stacked (see
        :func:`~seqstore.batches.collate`).

    Attributes
    ----------
    state : torch.Tensor
        (epoch, batches to skip, 1 if the epoch runs over ``remaining`` only), in shared
        memory: workers persist across epochs and read the values the main process sets
        before each epoch starts.
    remaining : Remaining or None
        The records of an epoch resumed on another shape. Workers receive it when they
        start, so the Loader starts new ones when it changes.
    """

    def __init__(
        self,
        reader: Reader,
        transform: SampleTransform,
        spec: EpochSpec,
        ring: Ring | None,
        skip_bad: bool,
        affine: Affine | None = None,
    ) -> None:
        self.reader = reader
        self.transform = transform
        self.spec = spec
        self.ring = ring
        self.skip_bad = skip_bad
        self.affine = affine
        self.state = torch.zeros(3, dtype=torch.int64).share_memory_()
        self.remaining: Remaining | None = None

    def __iter__(self) -> Iterator[WorkerItem]:
        try:
            yield from self._batches()
        except SeqstoreError as err:
            # Answer every further request with the error rather than end: a worker that
            # ended would leave its share of the requests to the others, more batches than
            # their ring slots hold, and they would wait for a free slot forever.
            while True:
                yield WorkerFailure(err)

    def _batches(self) -> Iterator[WorkerItem]:
        spec = self.spec
        epoch, skip_batches, partial = (int(v) for v in self.state)
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # DataLoader collects items from workers round-robin starting at worker 0. Split
        # batches take a part from every worker, so worker w makes part w of each. Whole
        # batches after a resume at batch k: the next belongs to worker k % workers, so the
        # workers are rotated to take up where their counterparts left off.
        plan_worker = worker if spec.split else (worker + skip_batches) % spec.workers
        remaining = self.remaining if partial else None
        work = WorkerEpoch(spec, epoch, spec.rank, plan_worker, remaining)
        batches = iter_batches(
            self.reader.read_block, work, self.transform, skip_batches=skip_batches
        )
        in_worker = worker if info is not None else None
        if self.ring is not None and in_worker is not None and not spec.split:
            self.ring.reset(in_worker)
        for raw in batches:
            bad = replace_bad(raw, os.fspath(self.reader.location), self.skip_bad)
            yield (*collate(raw, self.ring, in_worker, self.affine, spec.split), bad)


def dead_worker(batches: Iterator[Any], wait: float = 2.0) -> str | None:
    """How a worker of the DataLoader iterator ``batches`` ended, if one has.

    A queue can break as a worker is killed, a moment before the process can be reaped:
    wait up to ``wait`` seconds for one to end before answering that none has.
    """
    workers = list(getattr(batches, "_workers", ()))
    if not workers:
        return None
    # The sentinel tells that a process ended even where its exit status cannot be had
    # (torch's own SIGCHLD handling may have reaped it first).
    ended = multiprocessing.connection.wait([w.sentinel for w in workers], timeout=wait)
    for worker in workers:
        if worker.sentinel in ended:
            code = worker.exitcode
            if code is None:
                how = "ended"
            elif code < 0:
                how = f"killed by {signal.Signals(-code).name}"
            else:
                how = f"exit status {code}"
            return f"worker pid {worker.pid}: {how}"
    return None


class BadRecordLog:
    """The bad records a loader has met: counted per epoch, each warned about once.

    Parameters
    ----------
    store
        The store, for messages.
    max_bad
        Most bad records an epoch may hold, or None for no limit.
    setting
        ``max_bad`` as the user set it (a count or a fraction), for messages.
    rank
        The loader's rank, for messages.

    Attributes
    ----------
    keys : list of str
        Keys of the bad records met so far, each once, in order.
    in_epoch : int
        Bad records met in the current epoch (saved with a loader's state).
    """

    def __init__(self, store: str | Path, max_bad: int | None, setting: float | None, rank: int):
        self.store = store
        self.max_bad = max_bad
        self.setting = setting
        self.rank = rank
        self.keys: list[str] = []
        self.in_epoch = 0
        self._warned: set[str] = set()

    def note(self, bad: list[BadRecord], epoch: int) -> None:
        """Count, keep and warn about a batch's bad records.

        Raises
        ------
        BadRecordError
            The epoch has now met more than ``max_bad``.
        """
        if not bad:
            return
        store = self.store
        if self.max_bad is not None and self.in_epoch + len(bad) > self.max_bad:
            key, index, decode_error = bad[-1]
            raise BadRecordError(
                f"more than max_bad={self.setting} bad records in epoch {epoch} "
                f"of store '{store}' on rank {self.rank}; the last: "
                + bad_message(key, index, store, decode_error)
            )
        self.in_epoch += len(bad)
        for key, index, decode_error in bad:
            if key in self._warned:
                continue
            self._warned.add(key)
            self.keys.append(key)
            what = "fails its checksum" if decode_error is None else "cannot be decoded"
            # Points at the training loop: note <- Loader._iter_epoch <- Loader.__iter__.
            warnings.warn(
                f"skipped record '{key}' (#{index}) of store '{store}': it {what}",
                BadRecordWarning,
                stacklevel=4,
            )


def guard_sigchld(on_death: Callable[[str], None], workers: int) -> Callable[[], None]:
    """Make a dead worker a call of ``on_death`` (its one-line message), not an exception.

    DataLoader's SIGCHLD handler raises its RuntimeError wherever the main thread is,
    often inside the training step, where no loader code can turn it into one clear
    error. While an epoch runs, this wraps that handler to keep the message instead.
    Returns what restores the handler (a no-op where there is nothing to wrap, as with
    no ``workers``).
    """
    previous = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    if (
        workers == 0
        or not callable(previous)
        or threading.current_thread() is not threading.main_thread()
    ):
        return lambda: None

    def on_sigchld(signum: int, frame: Any) -> None:
        try:
            previous(signum, frame)
        except RuntimeError as err:
            # torch adds hints on further lines to some of these: keep one line.
            on_death(" ".join(str(err).split()))

    signal.signal(signal.SIGCHLD, on_sigchld)

    def unguard() -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, previous)

    return unguard

"""What a loader worker process runs.

This is the Loader's worker room: :class:`SampleTransform` turns a record into a sample
(or a :class:`BadSample`), :class:`EpochDataset` is the IterableDataset each worker
iterates (its share of the epoch plan, batched and collated), and errors travel as values:
a worker that meets a bad record or any other seqstore error sends a
:class:`WorkerFailure` in place of a batch, and the main process raises it, so that the
training loop gets the one-line error rather than DataLoader's re-raise with the worker's
traceback; :mod:`seqstore.pytorch.failures` is how the main process hears of them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .. import transforms
from ..backends import Reader
from ..backends.mixed import MixedReader
from ..config import LoaderConfig
from ..engine.plan import EpochSpec, Remaining, WorkerEpoch, mix_sequence
from ..engine.stream import RawBatch, iter_batches
from ..errors import BadRecordError, SeqstoreError
from ..records import Record
from .batches import Affine, Ring, collate
from .failures import BadRecord, bad_message

__all__ = [
    "BadSample",
    "EpochDataset",
    "SampleTransform",
    "WorkerFailure",
    "WorkerItem",
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


# What a worker sends: a batch (images, labels, indices, bad records) or the error it met.
WorkerItem = tuple[Any, np.ndarray, np.ndarray, list[BadRecord]] | WorkerFailure


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
        self.bgr = cfg.channels == "bgr"
        self.verify = False

    def __call__(self, record: Record, rng: np.random.Generator) -> Any:
        """The sample of ``record``, or a :class:`BadSample` when the record is bad: it fails
        its checksum, or decoding it (in a built-in pipeline, everything up to the sample)
        raises a seqstore error. A user callable's own exceptions propagate."""
        if self.verify and not record.verify():
            return BadSample(record.key)
        try:
            if self.pipeline is not None:
                sample = self.pipeline(record.data, rng, name=record.key)
                if self.bgr and isinstance(sample, np.ndarray) and sample.shape[-1:] == (3,):
                    return cv2.cvtColor(sample, cv2.COLOR_RGB2BGR)
                return sample
            if self.user is None:  # transform="none": the encoded bytes
                return record.data
            from ..imaging.decode import decode, decode_pil

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
        :func:`~seqstore.pytorch.batches.collate`).

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
        read_block: Callable[[int, int], list[Record]] = self.reader.read_block
        mixed = self.reader if isinstance(self.reader, MixedReader) else None
        if mixed is not None:  # the engine's records are the epoch's positions in the mix
            sequence = mix_sequence(spec, epoch)
            read_block = sequence.reader(read_block)
        batches = iter_batches(read_block, work, self.transform, skip_batches=skip_batches)
        in_worker = worker if info is not None else None
        if self.ring is not None and in_worker is not None and not spec.split:
            self.ring.reset(in_worker)
        for raw in batches:
            if mixed is not None:  # labels into the mix's class list, bad keys named
                sources = sequence.sources(raw.indices)
                mixed.relabel(sources, raw.labels)
                for i, s in enumerate(raw.samples):
                    if isinstance(s, BadSample):
                        key = mixed.source_key(int(sources[i]), s.key)
                        raw.samples[i] = BadSample(key, s.decode_error)
                raw.indices = sequence.storage(raw.indices)
            bad = replace_bad(raw, os.fspath(self.reader.location), self.skip_bad)
            yield (*collate(raw, self.ring, in_worker, self.affine, spec.split), bad)

"""Loader: the object a training loop holds.

It is a ``torch.utils.data.DataLoader`` over an IterableDataset whose workers each read their
share of the epoch (see :mod:`seqstore.engine.order`) block by block, shuffle, decode and
augment, and return uint8 batches. Conversion to float and normalisation happen after the
batch reaches its device, in one step: uint8 is a quarter of the bytes over worker IPC and
over PCIe.

When every sample has the same shape (the named transforms), workers write batches into a
ring of shared-memory buffers made once per loader, and send only which buffer they used:
creating a fresh shared-memory segment per batch and faulting its pages in cost more than
the copy itself (about 7 ms per 64 images of 224x224, 8% of a worker's time on 2 cores). The
main process copies (or converts, or moves to the GPU) each batch out of the ring before the
training loop sees it, and hands the buffer back, so a batch a user keeps is never
overwritten.

Errors travel as values: a worker that meets a bad record or any other seqstore error sends
it in place of a batch, and the main process raises it, so that the training loop gets the
one-line error rather than DataLoader's re-raise with the worker's traceback.
"""

from __future__ import annotations

import math
import multiprocessing.connection
import os
import random
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from . import transforms
from .backends import Reader, open_store
from .config import LoaderConfig, load_config
from .engine.order import rank_sample_count
from .engine.plan import EpochSpec, WorkerEpoch
from .engine.stream import RawBatch, iter_batches
from .errors import (
    BadRecordError,
    BadRecordWarning,
    ConfigError,
    NotAStoreError,
    ResumeError,
    SeqstoreError,
    WorkerDiedError,
)
from .records import Record

__all__ = ["Loader", "resolve_split"]

# 2: the store's identity and the epoch's bad-record count joined the state.
# 3: the epoch spec's fields by their names: shuffle_capacity became capacity.
_STATE_VERSION = 3


def resolve_split(root: Path, split: str) -> tuple[Path, dict[str, Any]]:
    """Find the store or folder of ``split`` under a dataset root, and its reader options.

    See :class:`~seqstore.config.LoaderConfig` (``split``) for the layouts tried.
    """
    # Converted stores first: a root often keeps the image folder beside its store.
    for candidate in (
        root / f"{split}.lmdb",
        root / f"{split}.h5",
        root / f"{split}.hdf5",
        root / f"ILSVRC-{split}.lmdb",
        root / split,
    ):
        if not candidate.exists():
            continue
        labels = candidate / "val_annotations.txt"
        if candidate.is_dir() and (candidate / "images").is_dir() and labels.is_file():
            options: dict[str, Any] = {"labels": labels}
            if (root / "train").is_dir():
                options["classes"] = root / "train"
            return candidate / "images", options
        return candidate, {}
    raise NotAStoreError(
        f"no '{split}' split under '{root}' (looked for {split}.lmdb, {split}.h5, "
        f"{split}.hdf5, ILSVRC-{split}.lmdb, {split}/)"
    )


def _default_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    try:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError:
        raise ConfigError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} "
            "are not integers; fix the environment or pass rank= and world_size="
        ) from None


def _dead_worker(batches: Iterator[Any], wait: float = 2.0) -> str | None:
    """How a worker of the DataLoader iterator ``batches`` ended, if one has.

    A queue can break as a worker is killed, a moment before the process can be reaped:
    wait up to ``wait`` seconds for one to end before answering that none has.
    """
    workers = list(getattr(batches, "_workers", ()))
    if workers:
        multiprocessing.connection.wait([w.sentinel for w in workers], timeout=wait)
    for worker in workers:
        code = worker.exitcode
        if code is not None and code != 0:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            return f"worker pid {worker.pid}: {how}"
    return None


@dataclass(frozen=True)
class _Bad:
    """In place of a sample: its record fails its checksum (``decode_error`` None) or
    cannot be decoded (the decoder's message)."""

    key: str
    decode_error: str | None = None


@dataclass(frozen=True)
class _Failure:
    """In place of a batch: the worker stopped on ``error``, which the main process raises."""

    error: SeqstoreError


def _bad_message(key: str, index: int, store: Path, decode_error: str | None) -> str:
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


class _Transform:
    """Record + generator -> sample, for every kind of transform a config can name."""

    def __init__(self, cfg: LoaderConfig) -> None:
        spec = cfg.transform
        if spec is None:
            spec = "imagenet_train" if cfg.shuffle and cfg.split != "val" else "imagenet_val"
        named = {
            "imagenet_train": lambda: transforms.imagenet_train(cfg.image_size),
            "imagenet_val": lambda: transforms.imagenet_val(cfg.image_size, cfg.resize_size),
            "decode": transforms.decode_only,
        }
        self.pipeline: transforms.Pipeline | None = None
        self.user: Callable[[Any], Any] | None = None
        if isinstance(spec, str) and spec in named:
            self.pipeline = named[spec]()
        elif isinstance(spec, transforms.Pipeline):
            self.pipeline = spec
        elif spec != "none":
            self.user = spec
        self.image_format = cfg.image_format
        self.verify = False  # set by the Loader, which knows whether checksums were stored

    def __call__(self, record: Record, rng: np.random.Generator) -> Any:
        """The sample of ``record``, or a :class:`_Bad` when the record is bad: it fails its
        checksum, or decoding it (in a built-in pipeline, everything up to the sample)
        raises a seqstore error. A user callable's own exceptions propagate."""
        if self.verify and not record.verify():
            return _Bad(record.key)
        try:
            if self.pipeline is not None:
                return self.pipeline(record.data, rng, name=record.key)
            if self.user is None:  # transform="none": the encoded bytes
                return record.data
            from .decode import decode, decode_pil

            # User transforms draw from torch's and Python's generators (torchvision does):
            # seed both from the record's generator so augmentation is reproducible.
            seed = int(rng.integers(2**63))
            torch.manual_seed(seed)
            random.seed(seed)
            image: Any
            if self.image_format == "pil":
                image = decode_pil(record.data, name=record.key)
            else:
                image = decode(record.data, name=record.key)
        except SeqstoreError as err:
            return _Bad(record.key, str(err))
        return self.user(image)


def _normalize(
    images: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, layout: torch.memory_format
) -> torch.Tensor:
    """uint8 NCHW -> ``(images - mean) * inv_std`` in ``mean``'s dtype and ``layout``: one
    conversion (dtype and layout together, a new tensor), then two in-place passes, the
    fastest of the orders tried (a promoting ``mul`` or ``addcmul`` is 1.5x slower)."""
    return images.to(dtype=mean.dtype, memory_format=layout).sub_(mean).mul_(inv_std)


@dataclass(frozen=True)
class _Slot:
    """A batch a worker left in its ring: which worker, which buffer, how many samples."""

    worker: int
    slot: int
    size: int


class _Ring:
    """Shared-memory batch buffers, ``slots`` per worker, reused from batch to batch.

    A worker takes a free buffer (:meth:`acquire`), fills it and sends a :class:`_Slot`; the
    main process reads the batch out and frees the buffer (:meth:`release`). The DataLoader
    hands a worker its next task as soon as the main process takes a batch from it, so a
    worker has at most ``prefetch_factor`` batches in flight plus the one being read out:
    ``prefetch_factor + 1`` buffers keep it from ever waiting. That is about the shared
    memory that batches in flight take anyway, reserved once when the loader is made.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, shape: tuple[int, ...]):
        self.shape = shape
        size = (workers, slots, batch_size, *shape)
        try:
            # A new shared segment, as torch.multiprocessing makes them: no copy into it,
            # which share_memory_() of a fresh tensor would make (twice as slow).
            storage = torch.UntypedStorage._new_shared(math.prod(size))
            self.buffers = torch.empty(0, dtype=torch.uint8).set_(storage).view(size)
        except AttributeError:  # a torch without it
            self.buffers = torch.empty(size, dtype=torch.uint8).share_memory_()
        self.busy = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()

    def reset(self, worker: int) -> None:
        """Free all of ``worker``'s buffers: at the start of an epoch nothing else holds them
        (a batch is copied out before the training loop sees it)."""
        self.busy[worker] = 0

    def acquire(self, worker: int) -> int:
        """A free buffer of ``worker``, marked busy; waits for the main process if none is."""
        busy = self.busy[worker].numpy()
        while True:
            free = np.flatnonzero(busy == 0)
            if free.size:
                busy[free[0]] = 1
                return int(free[0])
            time.sleep(0.0005)

    def view(self, slot: _Slot) -> torch.Tensor:
        """The batch in ``slot``, NHWC, a view of the shared buffer."""
        return self.buffers[slot.worker, slot.slot, : slot.size]

    def release(self, slot: _Slot) -> None:
        """Hand ``slot``'s buffer back to its worker."""
        self.busy[slot.worker, slot.slot] = 0


# A bad record as it travels with its batch: key, store index, decoder message or None.
_BadRecord = tuple[str, int, str | None]


def _replace_bad(raw: RawBatch, store: Path, skip: bool) -> list[_BadRecord]:
    """Put the next good sample of the batch (wrapping around) in place of each bad one, in
    ``raw``, and return the bad records.

    Raises
    ------
    BadRecordError
        A bad record with ``skip`` off, or a batch with no good sample to take from.
    """
    bad = [i for i, s in enumerate(raw.samples) if isinstance(s, _Bad)]
    if not bad:
        return []
    found: list[_BadRecord] = [
        (raw.samples[i].key, int(raw.indices[i]), raw.samples[i].decode_error) for i in bad
    ]
    if not skip:
        key, index, decode_error = found[0]
        raise BadRecordError(_bad_message(key, index, store, decode_error))
    if len(bad) == len(raw.samples):
        raise BadRecordError(
            f"all {len(bad)} records of batch {raw.batch} of store '{store}' are bad, so none "
            f"can stand in for the others (first: '{found[0][0]}' (#{found[0][1]})); "
            "run `seqstore info --verify` on the store and rewrite it"
        )
    n = len(raw.samples)
    for i in bad:
        j = next(k % n for k in range(i + 1, i + n) if not isinstance(raw.samples[k % n], _Bad))
        raw.samples[i] = raw.samples[j]
        raw.labels[i] = raw.labels[j]
        raw.indices[i] = raw.indices[j]
    return found


def _collate(
    raw: RawBatch, ring: _Ring | None, worker: int | None
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A worker's batch: images (a :class:`_Slot`, a tensor, or a list) and numpy labels and
    indices, which pickle by value instead of each taking a shared-memory segment."""
    samples = raw.samples
    first = samples[0] if samples else None
    if not (
        isinstance(first, np.ndarray)
        and first.dtype == np.uint8
        and first.ndim == 3
        and all(s.shape == first.shape for s in samples)
    ):
        if isinstance(first, (bytes, str)) or first is None:
            return samples, raw.labels, raw.indices
        if isinstance(first, np.ndarray) and any(s.shape != first.shape for s in samples):
            # Images of their own sizes (transform="decode"): nothing to stack.
            return [torch.from_numpy(s) for s in samples], raw.labels, raw.indices
        return torch.utils.data.default_collate(samples), raw.labels, raw.indices
    if ring is not None and worker is not None and first.shape == ring.shape:
        slot = _Slot(worker, ring.acquire(worker), len(samples))
        np.stack(samples, out=ring.view(slot).numpy())
        return slot, raw.labels, raw.indices
    # NHWC in one buffer, in shared memory up front when in a worker so that the batch
    # crosses to the main process without another copy.
    out = torch.empty((len(samples), *first.shape), dtype=torch.uint8)
    if worker is not None:
        out.share_memory_()
    np.stack(samples, out=out.numpy())
    return out, raw.labels, raw.indices


# What a worker sends: a batch (images, labels, indices, bad records) or the error it met.
_Item = tuple[Any, np.ndarray, np.ndarray, list[_BadRecord]] | _Failure


class _EpochDataset(IterableDataset[_Item]):
    def __init__(
        self,
        reader: Reader[Any],
        transform: _Transform,
        spec: EpochSpec,
        ring: _Ring | None,
        skip_bad: bool,
    ) -> None:
        self.reader = reader
        self.transform = transform
        self.spec = spec
        self.ring = ring
        self.skip_bad = skip_bad
        # (epoch, batches to skip), in shared memory: workers persist across epochs and read
        # the values the main process sets before each epoch starts.
        self.state = torch.zeros(2, dtype=torch.int64).share_memory_()

    def __iter__(self) -> Iterator[_Item]:
        try:
            yield from self._batches()
        except SeqstoreError as err:
            # Answer every further request with the error rather than end: a worker that
            # ended would leave its share of the requests to the others, more batches than
            # their ring slots hold, and they would wait for a free slot forever.
            while True:
                yield _Failure(err)

    def _batches(self) -> Iterator[_Item]:
        spec = self.spec
        epoch, skip_batches = (int(v) for v in self.state)
        info = get_worker_info()
        worker = info.id if info is not None else 0
        # DataLoader collects batches from workers round-robin starting at worker 0; after
        # a resume at batch k the next batch belongs to worker k % workers, so the workers
        # are rotated to take up where their counterparts left off.
        work = WorkerEpoch(spec, epoch, spec.rank, (worker + skip_batches) % spec.workers)
        done = sum(1 for b in work.plan.batches if b < skip_batches)
        batches = iter_batches(self.reader.read_block, work, self.transform, skip_batches=done)
        in_worker = worker if info is not None else None
        if self.ring is not None and in_worker is not None:
            self.ring.reset(in_worker)
        for raw in batches:
            bad = _replace_bad(raw, self.reader.path, self.skip_bad)
            yield (*_collate(raw, self.ring, in_worker), bad)


class Loader:
    """Batches of a store for a training loop: sequential reads, local shuffle, any backend.

    Parameters
    ----------
    path
        A store, image folder, or dataset root (with ``split``).
    backend
        Backend name; default: from the store's manifest.
    config
        A :class:`~seqstore.config.LoaderConfig`, a dict, or a JSON/YAML file of one.
    **options
        Any :class:`~seqstore.config.LoaderConfig` field (they override ``config``).

    Examples
    --------
    >>> loader = Loader("train.lmdb", batch_size=256, num_workers=8, device="cuda")
    >>> for epoch in range(90):
    ...     loader.set_epoch(epoch)
    ...     for images, labels in loader:
    ...         ...

    Iterating yields ``(images, labels)``: images ``(N, 3, H, W)`` in ``dtype`` on
    ``device``, labels int64. ``len(loader)`` is the exact number of batches, the same on
    every rank. Iterating again after a whole epoch runs the next one; after breaking off,
    the same epoch starts over (:meth:`state_dict` continues it instead).

    Bad records: each record is checked against its stored checksum as it is read
    (``verify``), and a record is bad when that fails or when decoding it raises a seqstore
    error (:class:`~seqstore.errors.BadImageError` for bytes that are not an image). With
    ``on_error="raise"`` the first one ends the epoch with a
    :class:`~seqstore.errors.BadRecordError` naming the record and the store. With
    ``on_error="skip"`` a bad sample is replaced by the next good sample of its own batch
    (wrapping around to the batch's start), label and index included: every batch keeps its
    size, every rank yields ``len(loader)`` batches, and since a batch's records depend only
    on (seed, epoch, rank, batch), a resumed epoch yields what the uninterrupted one would.
    Each bad record is warned about once (:class:`~seqstore.errors.BadRecordWarning`) and
    its key kept in :attr:`bad_records`; past ``max_bad`` bad records in an epoch, or a
    batch whose every record is bad, the loader raises anyway. An exception raised by your
    own transform callable is a bug to see, never skipped: it reaches you as DataLoader
    re-raises it, with the worker's traceback.

    A worker process that dies (killed, out of memory) ends the epoch with a
    :class:`~seqstore.errors.WorkerDiedError`; the loader's :meth:`state_dict` still holds
    the last batch delivered, so iterating again after :meth:`load_state_dict` of it (on
    this loader or a new one) continues the epoch exactly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        backend: str | None = None,
        *,
        config: LoaderConfig | dict[str, Any] | str | Path | None = None,
        **options: Any,
    ) -> None:
        if path is not None:
            options["path"] = path
        if backend is not None:
            options["backend"] = backend
        self.config = cfg = load_config(LoaderConfig, config, **options)
        given = config if isinstance(config, LoaderConfig) else cfg
        if cfg.split == "val" and "shuffle" not in given.model_fields_set | set(options):
            # Validation reads every record once in storage order, and (see _Transform)
            # without augmentation, unless shuffling was asked for.
            self.config = cfg = cfg.model_copy(update={"shuffle": False})
        path_ = cfg.path
        reader_options = dict(cfg.reader_options)
        if cfg.split is not None:
            path_, found = resolve_split(cfg.path, cfg.split)
            reader_options = {**found, **reader_options}
        self.reader: Reader[Any] = open_store(path_, cfg.backend, **reader_options)
        rank, world = _default_rank_world()
        rank = cfg.rank if cfg.rank is not None else rank
        world = cfg.world_size if cfg.world_size is not None else world
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} must be in [0, world_size={world})")
        n = len(self.reader)
        if n == 0:
            raise ConfigError(f"store '{path_}' holds no records")
        self.spec = EpochSpec.from_config(
            cfg,
            num_records=n,
            mean_record_bytes=self.reader.manifest.mean_record_bytes,
            rank=rank,
            world_size=world,
        )
        """What fixes this loader's epochs: see :func:`seqstore.engine.plan.worker_order`."""
        transform = _Transform(cfg)
        transform.verify = self.verifies = cfg.verify and self.reader.stores_checksums
        pipeline = transform.pipeline
        # The built-in pipelines make HWC arrays; uint8 ones of one size go through the ring.
        self._hwc = pipeline is not None
        size = pipeline.output_size if pipeline is not None else None
        if pipeline is not None and any(
            isinstance(t, transforms.Normalize) for t in pipeline.transforms
        ):
            size = None
        self._ring = (
            _Ring(cfg.num_workers, cfg.prefetch_factor + 1, cfg.batch_size, (*size, 3))
            if cfg.num_workers > 0 and size is not None
            else None
        )
        self._dataset = _EpochDataset(
            self.reader, transform, self.spec, self._ring, skip_bad=cfg.on_error == "skip"
        )
        self.device = torch.device(cfg.device)
        pin = cfg.pin_memory if cfg.pin_memory is not None else self.device.type == "cuda"
        self._pin = pin and self.device.type == "cuda"
        self._pin_batches = pin and self._ring is None
        self._loader = self._make_dataloader()
        self._num_batches = self.spec.num_batches
        max_bad = cfg.max_bad
        if isinstance(max_bad, float):
            max_bad = int(max_bad * rank_sample_count(n, world, cfg.drop_last))
        self._max_bad = max_bad
        self._bad_in_epoch = 0
        self.bad_records: list[str] = []
        """Keys of the bad records met so far (``on_error="skip"``), each once, in order."""
        self._warned: set[str] = set()
        self._worker_death: str | None = None
        self._epoch = 0
        self._batches_done = 0
        self._resume_at = 0
        self._mean = torch.tensor(cfg.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self._inv_std = 1 / (torch.tensor(cfg.std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def _make_dataloader(self) -> DataLoader[_Item]:
        cfg = self.config
        return DataLoader(
            self._dataset,
            batch_size=None,
            num_workers=cfg.num_workers,
            # Batches in the ring are pinned as they are copied out of it (see _deliver).
            pin_memory=self._pin_batches,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers else None,
            # Workers start once, not every epoch; each epoch's plan comes from dataset.state.
            persistent_workers=cfg.num_workers > 0,
        )

    # -- facts -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._num_batches

    @property
    def epoch(self) -> int:
        """The epoch the next iteration runs."""
        return self._epoch

    @property
    def classes(self) -> list[str]:
        """Class names of the store (labels index them)."""
        return self.reader.classes

    @property
    def num_records(self) -> int:
        """Records in the store (all ranks together)."""
        return self.spec.num_records

    @property
    def rank(self) -> int:
        """This process's rank."""
        return self.spec.rank

    @property
    def world_size(self) -> int:
        """Number of ranks sharing each epoch."""
        return self.spec.world_size

    # -- epochs ------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next: its order and augmentation follow from (seed, epoch)."""
        if epoch < 0:
            raise ConfigError(f"epoch must be >= 0, got {epoch}")
        if epoch != self._epoch:
            self._resume_at = self._batches_done = 0
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self._epoch, self._resume_at
        self._resume_at = 0
        self._dataset.state[0] = epoch
        self._dataset.state[1] = start
        self._batches_done = start
        if start == 0:
            self._bad_in_epoch = 0
        batches = iter(self._loader)
        self._worker_death = None
        unguard = self._guard_sigchld()
        try:
            yield from self._iter_epoch(batches, epoch)
        except Exception:  # not GeneratorExit: a loop that breaks off keeps its workers
            # Stop the workers now rather than when the collector gets to them: a traceback
            # kept in a cycle (pytest's, a logger's) would have the DataLoader's queues closed
            # before its workers are told to stop, and its shutdown wait 5 s per worker. The
            # next iteration starts new ones.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self._loader = self._make_dataloader()
            raise
        finally:
            unguard()

    def _guard_sigchld(self) -> Callable[[], None]:
        """Make a dead worker a note for :meth:`_iter_epoch` rather than an exception.

        DataLoader's SIGCHLD handler raises its RuntimeError wherever the main thread is,
        often inside the training step, where no loader code can turn it into one clear
        error. While an epoch runs, this wraps that handler to keep the message instead.
        Returns what restores the handler.
        """
        previous = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
        if (
            not callable(previous)
            or self.config.num_workers == 0
            or threading.current_thread() is not threading.main_thread()
        ):
            return lambda: None

        def on_sigchld(signum: int, frame: Any) -> None:
            try:
                previous(signum, frame)
            except RuntimeError as err:
                # torch adds hints on further lines to some of these: keep one line.
                self._worker_death = " ".join(str(err).split())

        signal.signal(signal.SIGCHLD, on_sigchld)

        def unguard() -> None:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGCHLD, previous)

        return unguard

    def _iter_epoch(self, batches: Iterator[_Item], epoch: int) -> Iterator[Any]:
        while True:
            death = self._worker_death
            try:
                item = next(batches, None) if death is None else None
            except (RuntimeError, OSError, EOFError) as err:
                # A worker killed while its batch was in flight can also surface as a broken
                # connection of the queue the batch was coming through.
                death = _dead_worker(batches)
                if isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker"):
                    death = " ".join(str(err).split())
                if death is None:
                    raise
            death = death or self._worker_death
            if death is not None:
                raise WorkerDiedError(
                    f"a loader worker of store '{self.reader.path}' died in epoch {epoch} "
                    f"after batch {self._batches_done} ({death}); state_dict() still holds "
                    "the last batch delivered: load_state_dict() it and iterate to continue"
                )
            if item is None:
                break
            if isinstance(item, _Failure):
                error = item.error
                del item
                try:
                    raise error.with_traceback(None)
                finally:
                    # The traceback holds this frame: without this the frame and the error
                    # form a cycle, and when the collector breaks it the DataLoader's queues
                    # are closed before its workers are told to stop (10 s of waiting).
                    del error
            images, label_array, index_array, bad = item
            labels, indices = torch.as_tensor(label_array), torch.as_tensor(index_array)
            slot = images if isinstance(images, _Slot) else None
            try:
                self._note_bad(bad)
                if slot is not None:
                    if self._ring is None:
                        raise RuntimeError("a worker sent a ring slot, but this loader has none")
                    images, labels = self._deliver(self._ring.view(slot), labels, owned=False)
                else:
                    images, labels = self._deliver(images, labels, owned=True)
            finally:
                if slot is not None and self._ring is not None:
                    self._ring.release(slot)
            self._batches_done += 1
            if self._batches_done == self._num_batches:
                # Finished: the next iteration (and a state saved now) is the next epoch.
                self._epoch, self._batches_done = epoch + 1, 0
            if self.config.with_indices:
                yield images, labels, indices
            else:
                yield images, labels

    def _note_bad(self, bad: list[_BadRecord]) -> None:
        """Count, keep and warn about a batch's bad records; past ``max_bad``, raise."""
        if not bad:
            return
        store = self.reader.path
        if self._max_bad is not None and self._bad_in_epoch + len(bad) > self._max_bad:
            key, index, decode_error = bad[-1]
            raise BadRecordError(
                f"more than max_bad={self.config.max_bad} bad records in epoch {self._epoch} "
                f"of store '{store}' on rank {self.rank}; the last: "
                + _bad_message(key, index, store, decode_error)
            )
        self._bad_in_epoch += len(bad)
        for key, index, decode_error in bad:
            if key in self._warned:
                continue
            self._warned.add(key)
            self.bad_records.append(key)
            what = "fails its checksum" if decode_error is None else "cannot be decoded"
            warnings.warn(
                f"skipped record '{key}' (#{index}) of store '{store}': it {what}",
                BadRecordWarning,
                stacklevel=4,
            )

    def _deliver(self, images: Any, labels: torch.Tensor, owned: bool) -> tuple[Any, torch.Tensor]:
        """A collated batch -> what the loop gets: NCHW on the device, in ``dtype``.

        ``images`` is NHWC from the built-in pipelines (uint8, or float after a
        :class:`~seqstore.transforms.Normalize`), or whatever a user callable's outputs
        collate to, which is only moved to the device. ``owned=False``: ``images`` is a
        view of a ring buffer that is reused once this returns, so the result must not
        share its memory.
        """
        cfg = self.config
        non_blocking = self.device.type == "cuda"
        labels = labels.to(self.device, non_blocking=non_blocking)
        if isinstance(images, list) and self._hwc:  # HWC images of their own sizes
            return [x.permute(2, 0, 1).to(self.device) for x in images], labels
        if not isinstance(images, torch.Tensor):
            return images, labels
        if not self._hwc or images.ndim != 4:
            return images.to(self.device, non_blocking=non_blocking), labels
        images = images.permute(0, 3, 1, 2)  # NCHW with channels-last strides
        layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
        if self.device.type != "cpu":
            if not owned and self._pin:
                # Through page-locked memory, so that the copy to the GPU can run async.
                images = torch.empty_like(images, pin_memory=True).copy_(images)
            images = images.to(self.device, non_blocking=non_blocking and self._pin)
            owned = True  # a copy on the device
        if images.dtype != torch.uint8:  # a pipeline that normalised in the workers
            return images.to(memory_format=layout), labels
        if cfg.dtype == "uint8":
            if not owned and layout == torch.channels_last:
                # NHWC is channels-last NCHW: one flat copy. numpy's, single-threaded, since
                # torch's would wake its thread pool, which then spins against the workers.
                nhwc = images.permute(0, 2, 3, 1).numpy()
                return torch.from_numpy(nhwc.copy()).permute(0, 3, 1, 2), labels
            out = images.contiguous(memory_format=layout)
            if not owned and out.data_ptr() == images.data_ptr():  # already in that layout
                out = out.clone(memory_format=layout)
            return out, labels
        dtype = getattr(torch, cfg.dtype)
        if not cfg.normalize:
            return images.to(dtype=dtype, memory_format=layout), labels
        mean = self._mean.to(self.device, dtype, non_blocking=non_blocking)
        inv_std = self._inv_std.to(self.device, dtype, non_blocking=non_blocking)
        return _normalize(images, mean, inv_std, layout), labels

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: enough to continue an interrupted epoch exactly."""
        return {
            "version": _STATE_VERSION,
            "store": self.reader.identity,
            "store_path": str(self.reader.path),
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "bad_in_epoch": self._bad_in_epoch,
            **self.spec.as_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``: the next iteration yields the rest of its epoch.

        Raises
        ------
        ResumeError
            The state comes from a loader of another store, or of another shape (world size,
            workers, batch size, seed ...): the remaining samples would not be the ones it
            left. Or it was saved by an older seqstore (state version 1).
        """
        state = _upgrade_state(state)
        version = state.get("version")
        if version != _STATE_VERSION:
            raise ResumeError(
                f"loader state version {version!r} is not supported (this seqstore saves and "
                f"reads version {_STATE_VERSION}); start the epoch afresh with set_epoch()"
            )
        if state.get("store") != self.reader.identity:
            raise ResumeError(
                f"cannot resume: the saved loader state is of store '{state.get('store_path')}' "
                f"(id {state.get('store')}), not of '{self.reader.path}' "
                f"(id {self.reader.identity}); resume on the store it was saved on, or start "
                "the epoch afresh with set_epoch()"
            )
        diff = [
            f"{key} {state.get(key)!r} != {value!r}"
            for key, value in self.spec.as_dict().items()
            if state.get(key) != value
        ]
        if diff:
            raise ResumeError(
                "cannot resume: the saved loader state differs from this loader in "
                + ", ".join(diff)
                + "; resume with the same settings, or start the epoch afresh with set_epoch()"
            )
        done = int(state["batches_done"])
        if not 0 <= done <= self._num_batches:
            raise ResumeError(f"saved batches_done={done} is outside 0..{self._num_batches}")
        self._epoch = int(state["epoch"])
        self._batches_done = self._resume_at = done
        self._bad_in_epoch = int(state["bad_in_epoch"])


def _upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """A version 2 state (seqstore before the epoch spec) in the current form; any other
    state unchanged."""
    if state.get("version") != 2:
        return state
    state = {**state, "version": _STATE_VERSION}
    capacity = state.pop("shuffle_capacity", None)
    # Version 2 kept the buffer size an unshuffled loader does not use; the spec's is 1.
    state["capacity"] = capacity if state.get("shuffle") else 1
    return state

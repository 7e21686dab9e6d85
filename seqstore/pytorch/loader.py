"""Loader: the object a training loop holds, and the only place a DataLoader is made.

This is the PyTorch-facing room. The Loader resolves its config and the store, makes the
epoch spec (:class:`~seqstore.engine.plan.EpochSpec`), and runs a
``torch.utils.data.DataLoader`` over :class:`~seqstore.pytorch.workers.EpochDataset`, whose
workers each read their share of the epoch block by block, shuffle, decode and augment, and
return uint8 batches (through the shared-memory ring of :mod:`seqstore.pytorch.batches` when
every sample has the same shape). Conversion to float and normalisation happen after the
batch reaches its device (:class:`~seqstore.pytorch.delivery.Delivery`). Here too: epochs,
resume (:meth:`Loader.state_dict`, with :mod:`seqstore.pytorch.resume`), bad-record
accounting and the death of a worker.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..backends import Reader
from ..config import LoaderConfig, load_config
from ..engine.plan import EpochSpec, Remaining
from ..engine.shares import rank_share
from ..errors import ConfigError, OrderWarning, WorkerDiedError
from ..mixcheck import fit_blocks, label_runs, order_warning
from .batches import Slot, join
from .failures import BadRecordLog, dead_worker, guard_sigchld
from .placement import default_rank_world
from .resume import STATE_VERSION, resume_point
from .sources import open_sources
from .transport import plan_transport
from .workers import EpochDataset, SampleTransform, WorkerFailure, WorkerItem

__all__ = ["Loader"]


class Loader:
    """Batches of a store for a training loop: sequential reads, local shuffle, any backend.

    Parameters
    ----------
    path
        A store, image folder, or dataset root (with ``split``); a list: sources mixed
        in each epoch (``weights=``, see docs/mixing.md).
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

    Resume: ranks run in step (with ``pad_ranks=False`` some end one batch early), so the
    :meth:`state_dict` of any one rank tells what every rank has delivered; save rank 0's
    and load it on every rank. On the same world size, worker count and batch size the
    epoch continues exactly as it would have. On another shape (another GPU count after a
    preemption) the rest of the epoch is the records it had not delivered, each once over
    all ranks, shuffled anew (see :meth:`load_state_dict`); the epochs after are whole.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | list[Any] | None = None,
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
            # Validation reads every record once in storage order, and (see SampleTransform)
            # without augmentation, unless shuffling was asked for.
            self.config = cfg = cfg.model_copy(update={"shuffle": False})
        opened = open_sources(cfg)
        self.reader: Reader = opened.reader
        path_ = opened.path
        self.where = os.fspath(self.reader.location)
        """The store's path or URL."""
        rank, world = default_rank_world()
        rank = cfg.rank if cfg.rank is not None else rank
        world = cfg.world_size if cfg.world_size is not None else world
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} must be in [0, world_size={world})")
        n = sum(opened.mix[1]) if opened.mix else len(self.reader)
        if n == 0:
            raise ConfigError(f"store '{path_}' holds no records")
        try:
            runs = label_runs(self.reader) if cfg.shuffle else None
        finally:
            self.reader.close()  # workers open their own handles
        configured = EpochSpec.from_config(
            cfg,
            num_records=n,
            mean_record_bytes=self.reader.manifest.mean_record_bytes,
            rank=rank,
            world_size=world,
            by_record=self.reader.records_are_files,
            mix=opened.mix,
        )
        self.spec = fit_blocks(configured, runs)
        """What fixes this loader's epochs: see :func:`seqstore.engine.plan.worker_order`.
        Over a store whose labels come in runs of one class, its blocks are made small
        enough to mix them (:func:`seqstore.mixcheck.fit_blocks`)."""
        message = order_warning(os.fspath(self.reader.location), configured, self.spec, runs)
        if message is not None:
            warnings.warn(message, OrderWarning, stacklevel=2)
        transform = SampleTransform(cfg)
        transform.verify = self.verifies = cfg.verify and self.reader.stores_checksums
        self.device = torch.device(cfg.device)
        transport = plan_transport(cfg, transform, self.reader, self.device)
        self._ring = transport.ring
        self._dataset = EpochDataset(
            self.reader,
            transform,
            self.spec,
            self._ring,
            skip_bad=cfg.on_error == "skip",
            affine=transport.affine,
        )
        self._pin_batches = transport.pin_batches
        self._deliver = transport.deliver
        self._loader = self._make_dataloader()
        max_bad = cfg.max_bad
        if isinstance(max_bad, float):
            max_bad = int(max_bad * rank_share(n, world, rank, cfg.drop_last, cfg.pad_ranks)[1])
        self._bad = BadRecordLog(self.where, max_bad, setting=cfg.max_bad, rank=rank)
        self.bad_records: list[str] = self._bad.keys
        """Keys of the bad records met so far (``on_error="skip"``), each once, in order."""
        self._worker_death: str | None = None
        self._epoch = 0
        self._batches_done = 0
        self._resume_at = 0
        # The records the current epoch runs over once resumed on another shape; None: all.
        self._remaining: Remaining | None = None

    def _make_dataloader(self) -> DataLoader[WorkerItem]:
        cfg = self.config
        return DataLoader(
            self._dataset,
            batch_size=None,
            num_workers=cfg.num_workers,
            # Batches in the ring are pinned as they are copied out of it (see _deliver).
            pin_memory=self._pin_batches,
            # A worker's split parts are 1/workers of a batch: as many more of them keep
            # as many samples ahead, which absorb the slow image that holds a batch up.
            prefetch_factor=cfg.prefetch_factor * (cfg.num_workers if self.spec.split else 1)
            if cfg.num_workers
            else None,
            # Workers start once, not every epoch; each epoch's plan comes from dataset.state.
            persistent_workers=cfg.num_workers > 0,
        )

    # -- facts -------------------------------------------------------------------------------
    def __len__(self) -> int:
        """Batches the next iteration yields: the epoch's, or the rest of it after a resume
        (on the same shape or another); the same on every rank (progress bars read it)."""
        return max(0, self.spec.batches_over(self._remaining) - self._resume_at)

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
            self._remaining = None
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        epoch, start = self._epoch, self._resume_at
        self._resume_at = 0
        self._dataset.state[0] = epoch
        self._dataset.state[1] = start
        self._dataset.state[2] = self._remaining is not None
        self._batches_done = start
        if start == 0:
            self._bad.in_epoch = 0
        batches = iter(self._loader)
        self._worker_death = None
        unguard = guard_sigchld(self._note_death, workers=self.config.num_workers)
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

    def _note_death(self, message: str) -> None:
        self._worker_death = message

    def _iter_epoch(self, batches: Iterator[WorkerItem], epoch: int) -> Iterator[Any]:
        # Split batches come as one part from each worker in turn (see EpochSpec.split).
        parts: list[tuple[Any, np.ndarray, np.ndarray, list[Any]]] = []
        while True:
            death = self._worker_death
            try:
                item = next(batches, None) if death is None else None
            except (RuntimeError, OSError, EOFError) as err:
                # A worker killed while its batch was in flight can also surface as a broken
                # connection of the queue the batch was coming through.
                death = dead_worker(batches)
                if isinstance(err, RuntimeError) and str(err).startswith("DataLoader worker"):
                    death = " ".join(str(err).split())
                if death is None:
                    raise
            death = death or self._worker_death
            if death is not None:
                raise WorkerDiedError(
                    f"a loader worker of store '{self.where}' died in epoch {epoch} "
                    f"after batch {self._batches_done} ({death}); state_dict() still holds "
                    "the last batch delivered: load_state_dict() it and iterate to continue"
                )
            if item is None:
                break
            if isinstance(item, WorkerFailure):
                error = item.error
                del item
                try:
                    raise error.with_traceback(None)
                finally:
                    # The traceback holds this frame: without this the frame and the error
                    # form a cycle, and when the collector breaks it the DataLoader's queues
                    # are closed before its workers are told to stop (10 s of waiting).
                    del error
            parts.append(item)
            del item
            size = self.spec.batch_size_of(self._batches_done, self._remaining)
            if len(parts) < self.spec.parts(size):
                continue
            images = join([part[0] for part in parts], self._ring)
            labels = torch.as_tensor(np.concatenate([part[1] for part in parts]))
            indices = torch.as_tensor(np.concatenate([part[2] for part in parts]))
            bad = [record for part in parts for record in part[3]]
            parts.clear()
            slot = images if isinstance(images, Slot) else None
            try:
                self._bad.note(bad, self._epoch)
                if slot is not None:
                    if self._ring is None:
                        raise RuntimeError("a worker sent a ring slot, but this loader has none")
                    if self.device.type == "cpu":  # the batch is the buffer, lent
                        lent, slot = slot, None
                        images, labels = self._deliver(self._ring.lease(lent), labels, owned=True)
                    else:  # copied to the device, and the buffer handed back
                        images, labels = self._deliver(self._ring.view(slot), labels, owned=False)
                else:
                    images, labels = self._deliver(images, labels, owned=True)
            finally:
                if slot is not None and self._ring is not None:
                    self._ring.release(slot)
            self._batches_done += 1
            if self._batches_done == len(self):
                # Finished: the next iteration (and a state saved now) is the next epoch.
                self._epoch, self._batches_done, self._remaining = epoch + 1, 0, None
            # Handed over with nothing left in this frame: a lent buffer goes back as soon
            # as the loop drops the batch.
            ready = [(images, labels, indices) if self.config.with_indices else (images, labels)]
            del images, labels, indices
            yield ready.pop()

    # -- resume ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Where this loader is: enough to continue an interrupted epoch on any shape.

        Every rank runs the same number of batches, so the state of any one rank tells what
        all ranks have delivered: one rank's state (rank 0's) is all a checkpoint needs.
        Plain values only (JSON can hold it). ``remaining`` is None except in an epoch
        resumed on another shape, where it holds that epoch's records as a compressed
        bitmap (at most one bit per record: 160 KB for 1.28M records).
        """
        return {
            "version": STATE_VERSION,
            "store": self.reader.identity,
            "store_path": self.where,
            "epoch": self._epoch,
            "batches_done": self._batches_done,
            "bad_in_epoch": self._bad.in_epoch,
            **self.spec.as_dict(),
            "remaining": None if self._remaining is None else self._remaining.to_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (any rank's): the next iteration yields the rest of its
        epoch.

        Saved with the same world size, worker count, batch size, block and buffer size,
        the epoch continues exactly as the interrupted one would have, batch for batch.
        Saved with another shape, the next iteration runs over the records the interrupted
        epoch had not delivered on any rank, each once, in a fresh order of the same blocks
        (found by replaying the interrupted run's shuffle decisions on indices: no record is
        read). Its ranks run the same number of batches: without ``drop_last`` the rest is
        padded by repeating its first records (fewer than one per rank), with ``drop_last``
        the last records that do not fill a batch on every rank are dropped.
        ``len(loader)`` is then the rest's batch count; the epochs after it are whole.

        Raises
        ------
        ResumeError
            The state comes from a loader of another store, seed or shuffle setting, is
            damaged, or was saved by an older seqstore (state version 1).
        """
        point = resume_point(state, self.spec, self.reader.identity, self.where)
        self._epoch = point.epoch
        self._batches_done = self._resume_at = point.batches_done
        self._bad.in_epoch = point.bad_in_epoch
        if point.remaining is not self._remaining:
            self._remaining = self._dataset.remaining = point.remaining
            # Workers receive the records as they start: running ones have the old ones.
            self._stop_workers()
            self._loader = self._make_dataloader()

    def _stop_workers(self) -> None:
        running = getattr(self._loader, "_iterator", None)
        shutdown = getattr(running, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

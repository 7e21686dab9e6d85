"""Writing a sharded store: shards one by one, or by many processes at once, and the
manifest once all are there (the layout: :mod:`seqstore.backends.sharded`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, ClassVar

from ...errors import ConfigError, CorruptStoreError, NotAStoreError, PartialStoreError
from ...manifest import PARTIAL_NAME, PROGRESS_NAME, Manifest, Provenance, Shard, read_manifest
from ...records import Record
from ..base import Backend
from ..writer import Writer
from .layout import shard_entry, shard_name, store_index_digest

__all__ = [
    "ShardedWriter",
    "finished_shard",
    "open_shard_writer",
    "shard_provenance",
    "sharded_writer_cls",
]


def open_shard_writer(
    directory: Path,
    index: int,
    backend: type[Backend],
    *,
    classes: list[str],
    provenance: Provenance,
    resume: bool = False,
    overwrite: bool = False,
) -> Writer:
    """A writer of shard ``index`` inside ``directory``, the staging directory of a
    :class:`ShardedWriter` (in this process or, for a parallel conversion, another one).

    The shard is an ordinary store of ``backend``, written through its own staging
    directory and moved into place when finished; ``resume`` continues the shard's killed
    writer from its last checkpoint (see :class:`~seqstore.backends.writer.Writer`).
    """
    return backend.open_writer(
        directory / shard_name(index),
        classes=classes,
        provenance=provenance,
        resume=resume,
        overwrite=overwrite,
    )


def shard_provenance(provenance: Provenance, index: int) -> Provenance:
    """The provenance of shard ``index`` of a store of ``provenance``: the store's, with
    ``shard`` among its options (so that a shard's writer never continues another shard's
    killed writer), and none of its skipped files or warnings (each shard lists its own,
    the store all of them)."""
    update = {"options": {**provenance.options, "shard": index}, "skipped": [], "warnings": []}
    return provenance.model_copy(update=update)


def finished_shard(directory: Path, index: int) -> Manifest | None:
    """The manifest of shard ``index`` inside ``directory`` if that shard is finished."""
    try:
        return read_manifest(directory / shard_name(index))
    except (NotAStoreError, PartialStoreError, CorruptStoreError):
        return None


class ShardedWriter(Writer):
    """Writer of a sharded store of one backend's format (see the module docstring).

    Made by ``sharded_writer_cls(backend)(path, shard_bytes=N, ...)``. It is filled in one
    of two ways:

    * :meth:`write` records in order: they go to shard 0 until it holds ``shard_bytes``
      bytes of records, then to shard 1, and so on;
    * shard by shard, by any processes in any order: each writes shard ``i`` into
      :attr:`directory` with :func:`open_shard_writer`, and :meth:`finish` collects shards
      ``0`` to ``num_shards - 1``.

    Parameters
    ----------
    path, classes, overwrite, provenance, resume
        See :class:`~seqstore.backends.writer.Writer`. With ``resume``, the shards a killed
        writer of the same store finished stay (:func:`finished_shard` finds them).
    shard_bytes
        Bytes of records per shard, for :meth:`write`.
    num_shards
        The number of shards :meth:`finish` requires; default: as many as :meth:`write`
        began.
    """

    data_files = ()
    resumable = True
    #: The backend whose stores the shards are (set by :func:`sharded_writer_cls`).
    shard_backend: ClassVar[type[Backend]]

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        shard_bytes: int,
        num_shards: int | None = None,
        **kwargs: Any,
    ) -> None:
        if shard_bytes < 1:
            raise ConfigError(f"shard_bytes must be >= 1, got {shard_bytes}")
        self.shard_bytes = shard_bytes
        self.num_shards = num_shards
        self._current: Writer | None = None
        self._began = 0
        self._entries: list[Shard] = []
        super().__init__(path, **kwargs)

    def _open(self) -> None:
        # A progress file marks the staging directory as one to continue, not to empty:
        # its finished shards are what a resumed conversion keeps.
        self.checkpoint({})

    def _reopen(self) -> None:
        pass  # the finished shards are on disk, found by finished_shard()

    def _write(self, record: Record) -> None:
        if self._current is None:
            # overwrite: a shard of an earlier, killed writer of this store is rewritten.
            self._current = open_shard_writer(
                self.directory,
                self._began,
                self.shard_backend,
                classes=self.classes,
                provenance=shard_provenance(self.provenance, self._began),
                overwrite=True,
            )
            self._began += 1
        self._current.write(record)
        if self._current.total_bytes >= self.shard_bytes:
            self._current.finish()
            self._current = None

    def _finish(self) -> None:
        if self._current is not None:
            self._current.finish()
            self._current = None
        count = self._began if self.num_shards is None else self.num_shards
        start = 0
        entries = []
        for i in range(count):
            m = finished_shard(self.directory, i)
            if m is None:
                raise PartialStoreError(
                    f"shard {i} of the {count} of '{self.path}' was not written (a process "
                    "writing it failed or was killed); convert again with --resume to write "
                    "the shards that are missing"
                )
            if m.format != self.format or m.classes != self.classes:
                raise CorruptStoreError(
                    f"shard {i} of '{self.path}' is a {m.format} store of other classes than "
                    "the store's; convert again without --resume"
                )
            entries.append(shard_entry(shard_name(i), start, m))
            self.provenance.skipped.extend(m.provenance.skipped)
            self.provenance.warnings.extend(m.provenance.warnings)
            start += m.num_records
        keep = {e.name for e in entries} | {PARTIAL_NAME, PROGRESS_NAME}
        for leftover in self.directory.iterdir():  # killed shard writers' litter, old shards
            if leftover.name not in keep:
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
        self._entries = entries
        self.num_records = start
        self.total_bytes = sum(e.total_bytes for e in entries)

    def _index_digest(self) -> str | None:
        return store_index_digest(self._entries)

    def _shards(self) -> list[Shard] | None:
        return self._entries

    def _abort(self) -> None:
        if self._current is not None:
            self._current.abort()
            self._current = None


_writer_classes: dict[str, type[ShardedWriter]] = {}


def sharded_writer_cls(backend: type[Backend]) -> type[ShardedWriter]:
    """The :class:`ShardedWriter` of ``backend``'s stores.

    Raises
    ------
    ConfigError
        The backend's stores cannot be shards: it has no writer, or its stores keep their
        records in no data files of their own (an image folder).
    """
    writer = backend.writer_cls
    if writer is None or not writer.data_files:
        raise ConfigError(
            f"the '{backend.name}' backend cannot write sharded stores; shard an lmdb or hdf5 "
            "store instead"
        )
    key = f"{backend.__module__}:{backend.__qualname__}"
    cls = _writer_classes.get(key)
    if cls is None or cls.shard_backend is not backend:
        cls = type(
            f"Sharded{writer.__name__}",
            (ShardedWriter,),
            {
                "__module__": __name__,
                "__doc__": f"Writer of sharded {backend.name} stores (see ShardedWriter).",
                "format": writer.format,
                "format_version": writer.format_version,
                "shard_backend": backend,
            },
        )
        _writer_classes[key] = cls
    return cls

"""Sharded stores: ordinary stores of one format under one manifest, read as one store.

Layout of a sharded store directory::

    seqstore.json      the manifest: format, records, classes, ... and ``shards``
    shard-00000/       an ordinary store of that format: its own seqstore.json and data file
    shard-00001/
    ...

Shard ``i`` holds the store's records ``shards[i].start`` to ``shards[i].stop - 1``, so
record numbers are store-wide and run on from one shard to the next. Each shard is a complete
store by itself, whose manifest vouches for its data file; the store's manifest lists each
shard's record range, bytes, data file sizes, index digest and manifest digest
(:class:`~seqstore.manifest.Shard`), so a shard swapped for another or edited is refused. The
store's ``index_digest`` is made of its shards' index digests: it depends on the records
alone, not on how many processes wrote them. :attr:`Reader.shard_bounds
<seqstore.backends.reader.Reader.shard_bounds>` says where the shards meet.

A sharded store is written like any other (:mod:`.staging`): in a hidden staging directory,
where shards appear one by one, each written through a staging directory of its own and
moved into place when finished, by any number of processes at once. Only once every shard
is there does :class:`ShardedWriter` write the manifest and move the store into place, so
a sharded store is whole or absent, and a killed conversion leaves finished shards that
``convert --resume`` keeps.
"""

from __future__ import annotations

import inspect
import os
import shutil
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, CorruptStoreError, NotAStoreError, PartialStoreError
from ..manifest import (
    PARTIAL_NAME,
    PROGRESS_NAME,
    Manifest,
    Provenance,
    Shard,
    index_digest,
    read_manifest,
)
from ..records import Record
from .base import Backend
from .ranges import direct_io_default
from .reader import Reader, check_layout, is_local
from .staging import read_store_manifest
from .writer import Writer

__all__ = [
    "ShardedReader",
    "ShardedWriter",
    "finished_shard",
    "open_shard_writer",
    "shard_name",
    "shard_provenance",
    "sharded_writer_cls",
]

#: Shard readers a process keeps open at once; the least recently read is closed beyond it,
#: so that a store of thousands of shards never runs a process out of file descriptors.
OPEN_SHARDS = 64


def shard_name(index: int) -> str:
    """The directory of shard ``index`` inside a sharded store: ``shard-00042``."""
    return f"shard-{index:05d}"


def _store_index_digest(shards: list[Shard]) -> str:
    return index_digest(*((s.index_digest or "").encode() for s in shards))


def _shard_entry(name: str, start: int, manifest: Manifest) -> Shard:
    if manifest.digest is None:
        raise CorruptStoreError(f"shard '{name}' has a manifest without its digest")
    return Shard(
        name=name,
        start=start,
        num_records=manifest.num_records,
        total_bytes=manifest.total_bytes,
        data_files=manifest.data_files,
        index_digest=manifest.index_digest,
        digest=manifest.digest,
    )


class ShardedReader(Reader):
    """Reader of a sharded store: one store, whatever number of shards holds it.

    Record numbers are store-wide; :meth:`read_block` reads a block that crosses shards as
    one read per shard. Shard readers are made on first use, each checked against the
    store's manifest, and at most :data:`OPEN_SHARDS` hold open files in a process.

    Subclasses read stores elsewhere through three hooks: :meth:`_read_manifest` (the
    store's manifest), :meth:`_shard_location` (where a shard is) and :meth:`_shard_reader`
    (its reader); :class:`~seqstore.remote.sharded.RemoteShardedReader` reads one at a URL.

    Parameters
    ----------
    location
        The store directory.
    backend
        The backend of the shards (default: the manifest's format).
    **options
        Passed to each shard's reader (for example ``readahead`` of LMDB). A reader that
        takes ``direct_io`` and is not given it gets the default for the whole store's size
        (see :func:`~seqstore.backends.ranges.direct_io_default`), not its shard's.
    """

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        backend: type[Backend] | str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(location)
        # For messages: the directory, or the URL of a store that is not on a local disk.
        self._where = str(self.path) if is_local(location) else os.fspath(location)
        self._manifest = self._read_manifest()
        m = self._manifest
        if m.shards is None:
            raise NotAStoreError(f"'{self._where}' is a store of one data file, not a sharded one")
        if not isinstance(backend, type):
            from .registry import get_backend

            backend = get_backend(backend or m.format)
        self.backend = backend
        self.labels_apart = backend.reader_cls.labels_apart
        check_layout(m, self._where, backend.reader_cls.layout_versions)
        self._options = options
        self._bounds = np.array([0, *(s.stop for s in m.shards)], np.int64)
        self._readers: dict[int, Reader] = {}
        self._open: OrderedDict[int, None] = OrderedDict()
        self._open_pid = os.getpid()

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def shards(self) -> list[Shard]:
        """The shards, in record order, as the manifest lists them."""
        return list(self._manifest.shards or ())

    @property
    def shard_bounds(self) -> np.ndarray:
        # docstring inherited
        return self._bounds.copy()

    def shard(self, index: int) -> Reader:
        """The reader of shard ``index``, made on first use and checked against the store's
        manifest.

        Raises
        ------
        CorruptStoreError
            The shard is missing, unfinished, or not the one the manifest lists.
        """
        if os.getpid() != self._open_pid:  # a forked or spawned child opens its own files
            self._open.clear()
            self._open_pid = os.getpid()
        reader = self._readers.get(index)
        if reader is None:
            reader = self._readers[index] = self._open_shard(index)
        self._open[index] = None
        self._open.move_to_end(index)
        while len(self._open) > OPEN_SHARDS:
            oldest, _ = self._open.popitem(last=False)
            self._readers[oldest].close()
        return reader

    def _read_manifest(self) -> Manifest:
        """The store's manifest (hook: a local store's is read from its directory)."""
        return read_store_manifest(self.path)

    def _open_shard(self, index: int) -> Reader:
        entry = self.shards[index]
        where = self._shard_location(entry)
        try:
            reader = self._shard_reader(where)
        except (NotAStoreError, PartialStoreError) as exc:
            raise CorruptStoreError(
                f"sharded store '{self._where}' lacks its shard '{entry.name}' ({exc}); "
                "re-create the store with seqstore convert"
            ) from None
        m = reader.manifest
        if (m.digest, m.num_records, m.index_digest, m.format) != (
            entry.digest,
            entry.num_records,
            entry.index_digest,
            self._manifest.format,
        ):
            raise CorruptStoreError(
                f"shard '{where}' is not the shard the manifest of '{self._where}' lists "
                "(replaced or edited); re-create the store with seqstore convert"
            )
        return reader

    def _shard_location(self, entry: Shard) -> str | os.PathLike[str]:
        """Where the shard ``entry`` is (hook: a directory inside the store's)."""
        return self.path / entry.name

    def _shard_reader(self, where: str | os.PathLike[str]) -> Reader:
        """The reader of the shard at ``where``, not yet checked against the manifest
        (hook: the backend's reader of a local store).

        Raises
        ------
        NotAStoreError, PartialStoreError
            No finished store is there.
        """
        options = self._options
        takes = inspect.signature(self.backend.reader_cls).parameters
        if "direct_io" in takes and "direct_io" not in options:
            options = {**options, "direct_io": direct_io_default(self.manifest.total_bytes)}
        return self.backend.reader_cls(where, **options)

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        bounds = self._bounds
        out: list[Record] = []
        i = int(np.searchsorted(bounds, start, side="right")) - 1
        while start < stop:
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            if hi > start:  # an empty shard holds nothing to read
                end = min(stop, hi)
                out.extend(self.shard(i).read_block(start - lo, end - lo))
                start = end
            i += 1
        return out

    def labels(self) -> np.ndarray:
        # docstring inherited
        parts = [self.shard(i).labels() for i in range(len(self.shards))]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def check_index(self) -> None:
        # docstring inherited
        if _store_index_digest(self.shards) != self._manifest.index_digest:
            raise CorruptStoreError(
                f"the shard list of '{self._where}' does not match its index digest (damaged or "
                "edited); re-create the store with seqstore convert"
            )
        for i in range(len(self.shards)):
            self.shard(i).check_index()

    def close(self) -> None:
        # docstring inherited
        for reader in self._readers.values():
            reader.close()
        self._open.clear()


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

    Made by :meth:`Backend.open_writer(path, shard_bytes=N)
    <seqstore.backends.base.Backend.open_writer>`. It is filled in one of two ways:

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
            entries.append(_shard_entry(shard_name(i), start, m))
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
        return _store_index_digest(self._entries)

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

"""Reading a sharded store as one store, wherever it is (the layout:
:mod:`seqstore.backends.sharded`)."""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from ...errors import CorruptStoreError, NotAStoreError, PartialStoreError
from ...io.local import direct_io_default
from ...io.places import Place
from ...manifest import Manifest, Shard
from ...records import Record
from ..base import Backend
from ..reader import Reader, check_layout, read_across, store_manifest
from .layout import store_index_digest

__all__ = ["OPEN_SHARDS", "ShardedReader"]

#: Shard readers a process keeps open at once; the least recently read is closed beyond it,
#: so that a store of thousands of shards never runs a process out of file descriptors.
OPEN_SHARDS = 64


class ShardedReader(Reader):
    """Reader of a sharded store: one store, whatever number of shards holds it.

    Record numbers are store-wide; :meth:`read_block` reads a block that crosses shards as
    one read per shard. Shard readers are made on first use, each checked against the
    store's manifest, and at most :data:`OPEN_SHARDS` hold open files in a process.

    The store and its shards are read through the store's place: a directory, or a prefix
    in object storage where each shard is ``URL/shard-NNNNN``.

    Parameters
    ----------
    location
        The store directory, or its :class:`~seqstore.io.places.Place`.
    backend
        The backend of the shards.
    **options
        Passed to each shard's reader (for example ``readahead`` of LMDB). A reader that
        takes ``direct_io`` and is not given it gets the default for the whole store's size
        (see :func:`~seqstore.io.local.direct_io_default`), not its shard's.
    """

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        backend: type[Backend],
        **options: Any,
    ) -> None:
        super().__init__(location)
        self._where = self.place.where  # for messages
        self._manifest = store_manifest(self.place)
        m = self._manifest
        if m.shards is None:
            raise NotAStoreError(f"'{self._where}' is a store of one data file, not a sharded one")
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

    def _open_shard(self, index: int) -> Reader:
        entry = self.shards[index]
        place = self.place.child(entry.name)
        where = place.where
        try:
            reader = self._shard_reader(place)
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

    def _shard_reader(self, place: Place) -> Reader:
        """The reader of the shard at ``place``, not yet checked against the manifest.

        Raises
        ------
        NotAStoreError, PartialStoreError
            No finished store is there.
        """
        options = self._options
        takes = inspect.signature(self.backend.reader_cls).parameters
        if "direct_io" in takes and "direct_io" not in options:
            options = {**options, "direct_io": direct_io_default(self.manifest.total_bytes)}
        return self.backend.open_reader(place, **options)

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        return read_across(
            self._bounds, start, stop, lambda i, a, b: self.shard(i).read_block(a, b)
        )

    def labels(self) -> np.ndarray:
        # docstring inherited
        parts = [self.shard(i).labels() for i in range(len(self.shards))]
        return np.concatenate(parts) if parts else np.empty(0, np.int64)

    def check_index(self) -> None:
        # docstring inherited
        if store_index_digest(self.shards) != self._manifest.index_digest:
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

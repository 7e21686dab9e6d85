"""Reading LMDB stores (the layout: :mod:`.layout`), wherever their ``data.mdb`` is.

A block's values are found in the leaf pages (:class:`~.pages.PageTree`) and read as extents
of the file: runs of neighbouring values, one read each (one ``pread``, one ``O_DIRECT``
read, or one ranged GET). On a local disk the file is also an LMDB environment, shared by
the readers of a process (:mod:`.env`), which reads a block through its memory map where
the leaves are not as expected; in object storage the page parser is the only way in, and
a page it cannot parse is a damaged store.
"""

from __future__ import annotations

import os
import struct
import sys
from typing import Any, ClassVar

import lmdb
import numpy as np

from ...errors import CorruptStoreError
from ...io.per_process import ProcessLocal
from ...io.places import Place
from ...io.ranges import GAP, Source
from ...manifest import Manifest, index_digest
from ...records import Record
from ..reader import store_manifest
from .env import SharedEnvReader
from .layout import CHECKSUMS_KEY, DATA_FILE, LABELS_KEY, decode_record, index_key
from .pages import PageTree, Value, cursor_extent

__all__ = ["LMDBReader", "read_values"]


def read_values(source: Source, values: list[Value]) -> list[memoryview | bytes]:
    """The bytes of ``values`` (:meth:`PageTree.values`), in order: those on overflow pages
    read as :meth:`~seqstore.io.ranges.Source.read_extents` does, in runs of neighbours."""
    extents = [(v[0], v[1] - v[0]) for v in values if isinstance(v, tuple)]
    pieces = iter(source.read_extents(extents))
    return [next(pieces) if isinstance(v, tuple) else v for v in values]


class LMDBReader(SharedEnvReader):
    """Reader of a seqstore LMDB store, on a local disk or in object storage.

    Parameters
    ----------
    location
        The store directory, or its :class:`~seqstore.io.places.Place`.
    readahead
        Let the OS read around every page fault of the memory map (a local store). Off by
        default on Linux, where a block's values are read from their file extents and a
        fault is only ever a page of the B-tree, for which reading megabytes around it (the
        kernel's default) is waste; on by default elsewhere, where blocks are read through
        the map alone.
    direct_io
        Read a block that is not in the page cache with ``O_DIRECT``, in one request per
        4 MB, and cut its records from that read (see :mod:`seqstore.io.local`). Default:
        when the store is larger than this machine's memory.
    """

    layout_versions: ClassVar[tuple[int, ...]] = (2,)
    labels_apart = True

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        readahead: bool | None = None,
        direct_io: bool | None = None,
    ) -> None:
        super().__init__(location)
        self.readahead = sys.platform != "linux" if readahead is None else readahead
        self._manifest = store_manifest(self.place)
        self.data: Source = self.open_data(DATA_FILE, direct=direct_io)
        self._tree: ProcessLocal[PageTree] = ProcessLocal()

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def reading_from(self) -> str:
        """Where this process reads the data from: its path, its URL, or a cached copy's
        path."""
        return self.data.reading_from

    @property
    def local(self) -> bool:
        """Whether the store is on this machine's disk (and so an LMDB environment too)."""
        return self.place.local is not None

    @property
    def tree(self) -> PageTree:
        """This process's page parser of the data file."""
        return self._tree.get(self._open_tree)

    def _open_tree(self) -> PageTree:
        # Pages read in runs into a bounded LRU, from a disk as from object storage: read
        # through the file's map instead, every leaf page of a store of small records
        # (values inside the leaves) stayed mapped into this process, whose resident memory
        # grew to the store's size (1.4 GB for info --verify of 1.28M records).
        return PageTree.of(self.data, self.place.remedy)

    def _env_options(self) -> dict[str, Any]:
        return {"readahead": self.readahead, "max_readers": 1024}

    def close(self) -> None:
        # docstring inherited
        super().close()
        self.data.close()
        self._tree.close()

    def _damaged_here(self, what: str) -> CorruptStoreError:
        return CorruptStoreError(
            f"LMDB store '{self.place.where}' is damaged ({what}); {self.place.remedy}"
        )

    def _plausible(self, start: int, stop: int, extent: int) -> bool:
        """Whether records ``start`` to ``stop - 1`` may really span ``extent`` bytes: never
        more than a few times what they are expected to take."""
        expected = (stop - start) * (self.manifest.mean_record_bytes + 4096) * 4 + GAP
        return 0 < extent <= expected

    def _read_located(self, start: int, stop: int) -> list[Record] | None:
        """Records ``start`` to ``stop - 1`` read without walking the memory map: their
        values' file extents, from the leaf pages, read in runs of neighbouring values.
        None when the leaves are not as expected, or their extents implausible."""
        values = self.tree.values([index_key(i) for i in range(start, stop)])
        if values is None:
            return None
        extents = [v[1] - v[0] for v in values if isinstance(v, tuple)]
        if extents and not self._plausible(start, stop, sum(extents)):
            return None
        return [decode_record(value) for value in read_values(self.data, values)]

    def _prime(self, cursor: lmdb.Cursor, start: int, stop: int) -> None:
        """Read the file extent of records ``start`` to ``stop - 1`` in one large read.

        Records are appended in key order, so a block's values lie back to back in the file,
        from the first record's value (or leaf page) to the end of the last one's. Walked
        through the map, every page of a value is a page fault (py-lmdb touches each page of
        a value it hands out), which on a cold, slow disk is an I/O of its own; read
        first, the pages are in the page cache when the walk copies them.
        """
        psize = self.tree.psize
        first = cursor_extent(cursor, index_key(start), psize)
        last = cursor_extent(cursor, index_key(stop - 1), psize) if stop - start > 1 else first
        if first is None or last is None:
            return
        lo, hi = first[0], last[1]
        if self._plausible(start, stop, hi - lo):
            self.data.prime(lo, hi - lo)  # type: ignore[attr-defined]

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        if not self.local:
            try:
                located = self._read_located(start, stop)
            except struct.error as exc:
                raise self._damaged_here(str(exc)) from None
            if located is None:
                raise self._damaged_here(f"the leaves of records {start} to {stop - 1}")
            return located
        out: list[Record] = []
        try:
            with self.env.begin(buffers=True) as txn:
                cursor = txn.cursor()
                if not self.readahead:  # else the kernel reads around each fault instead
                    located = self._read_located(start, stop)
                    if located is not None:
                        return located
                    self._prime(cursor, start, stop)
                if not cursor.set_key(index_key(start)):
                    raise CorruptStoreError(
                        f"record {start} is missing from LMDB store '{self.path}'; "
                        "re-create it with seqstore convert"
                    )
                for value in cursor.iternext(keys=False, values=True):
                    out.append(decode_record(value))
                    if len(out) == stop - start:
                        break
        except (lmdb.Error, struct.error) as exc:
            raise self._damaged(exc) from None
        if len(out) != stop - start:
            raise CorruptStoreError(
                f"LMDB store '{self.path}' ends before record {start + len(out)}"
            )
        return out

    def _index(self) -> tuple[bytes, bytes]:
        if self.local:
            try:
                with self.env.begin() as txn:
                    labels, checksums = txn.get(LABELS_KEY), txn.get(CHECKSUMS_KEY)
            except lmdb.Error as exc:
                raise self._damaged(exc) from None
        else:
            labels = self.tree.get(LABELS_KEY, self.data)
            checksums = self.tree.get(CHECKSUMS_KEY, self.data)
        if labels is None or checksums is None:
            raise CorruptStoreError(
                f"LMDB store '{self.place.where}' lacks its index; {self.place.remedy}"
            )
        return bytes(labels), bytes(checksums)

    def _checked_index(self) -> tuple[bytes, bytes]:
        labels, checksums = self._index()
        n = self.manifest.num_records
        if len(labels) != 4 * n or index_digest(labels, checksums) != self.manifest.index_digest:
            raise CorruptStoreError(
                f"the index of LMDB store '{self.place.where}' does not match its manifest "
                f"(damaged or edited); {self.place.remedy}"
            )
        return labels, checksums

    def check_index(self) -> None:
        # docstring inherited
        self._checked_index()

    def labels(self) -> np.ndarray:
        # docstring inherited
        return np.frombuffer(self._checked_index()[0], np.int32).astype(np.int64)

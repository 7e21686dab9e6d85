"""LMDB stores: one B-tree, records under ordered keys, read with a cursor.

Layout of a store directory::

    seqstore.json     manifest (format "lmdb")
    data.mdb          the LMDB environment

Record ``i`` lives under the 8-byte big-endian key ``i``, so key order is write order and a
cursor walking ``[start, stop)`` reads consecutive leaf pages: a sequential read. Its value is
a fixed little-endian header ``<iIIIH`` (label, width, height, CRC-32, key length), the key
in UTF-8, then the image bytes. The labels (int32) and checksums (uint32) of all records are
also kept, as arrays, under the keys ``b"\\xffseqstore:labels"`` and
``b"\\xffseqstore:checksums"``, so the engine and the benchmark can get them without reading
any image; the manifest's ``index_digest`` is
:func:`~seqstore.manifest.index_digest` of ``(labels, checksums)``. The environment holds no
lock file: readers open it with ``lock=False``.

Layout version 2 (seqstore 0.2) checksums the key, label and size with the bytes; version 1
stores are refused with a line that says to convert again.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import struct
import sys
from typing import Any, ClassVar

import lmdb
import numpy as np

from ..errors import CorruptStoreError, SeqstoreError
from ..manifest import Manifest, index_digest
from ..records import Record, encode_key
from .base import Backend
from .handles import ProcessLocal
from .lmdb_env import DATA_FILE, SharedEnvReader
from .ranges import GAP, FileRanges
from .staging import read_store_manifest
from .writer import Writer, ensure_space

__all__ = ["LMDBBackend", "LMDBReader", "LMDBWriter"]

_HEADER = struct.Struct("<iIIIH")  # label, width, height, crc32, key length
_LABELS_KEY = b"\xffseqstore:labels"
_CHECKSUMS_KEY = b"\xffseqstore:checksums"
_INITIAL_MAP_SIZE = 1 << 28


def _index_key(i: int) -> bytes:
    return i.to_bytes(8, "big")


def _encode(record: Record) -> bytes:
    key = encode_key(record.key)
    header = _HEADER.pack(record.label, record.width, record.height, record.checksum, len(key))
    return b"".join((header, key, record.data))


# LMDB's on-disk structures (mdb.c), unchanged since its first release: a page starts with
# its number (8 bytes) and, at byte 10, its flags; a leaf node is its data size (two 16-bit
# halves), flags and key size, then the key, then the value, or for a value too big for the
# leaf (F_BIGDATA) the number of its first overflow page.
_PAGE_FLAGS = struct.Struct("<QHH")  # page number, padding, flags
_PAGE_BOUNDS = struct.Struct("<HH")  # at byte 12: the end of the node offsets, of free space
_NODE = struct.Struct("<HHHH")  # size low, size high, flags, key size
_P_BRANCH, _P_LEAF, _F_BIGDATA, _PAGE_HEADER = 0x01, 0x02, 0x01, 16
_META_ROOT = struct.Struct("<QQQ")  # at byte 128 of a meta page: main root, last page, txn id


def _node_extent(cursor: lmdb.Cursor, index: int, psize: int) -> tuple[int, int] | None:
    """Where record ``index``'s value lies in the data file, ``(start, end)``, read from its
    leaf node without touching the value's own pages; None if the node is not as expected.

    A value on overflow pages lies from its first page on; one kept in the leaf is counted
    as its whole leaf page.
    """
    key = _index_key(index)
    if not cursor.set_key(key):
        return None
    address = int(np.frombuffer(cursor.key(), np.uint8).ctypes.data)
    page = address - address % psize
    pgno, _, page_flags = _PAGE_FLAGS.unpack(ctypes.string_at(page, _PAGE_FLAGS.size))
    node = ctypes.string_at(address - _NODE.size, _NODE.size + len(key) + 8)
    low, high, flags, key_size = _NODE.unpack_from(node)
    if not page_flags & _P_LEAF or key_size != len(key) or node[_NODE.size : -8] != key:
        return None
    if not flags & _F_BIGDATA:
        return pgno * psize, (pgno + 1) * psize
    overflow = struct.unpack_from("<Q", node, _NODE.size + len(key))[0]
    start = overflow * psize + _PAGE_HEADER
    return start, start + (low | high << 16)


class _Tree:
    """The main B-tree of an LMDB file, read page by page from ``data`` (a read-only map of
    the file: slicing it is bounds-checked): only branch and leaf pages are read, never a
    value's own pages, which py-lmdb's cursor touches for the first page of each value it
    visits.

    Every page number is checked against the meta page's last page, and the file's size.
    """

    def __init__(self, data: memoryview, psize: int) -> None:
        self.data, self.psize = data, psize
        metas = [_META_ROOT.unpack_from(data, page * psize + 128) for page in (0, 1)]
        self.root, last, _ = max(metas, key=lambda meta: meta[2])
        self.pages = min(len(data) // psize, last + 1)

    def _nodes(self, pgno: int) -> tuple[int, bytes, list[int]] | None:
        if not 1 < pgno < self.pages:
            return None
        page = bytes(self.data[pgno * self.psize : (pgno + 1) * self.psize])
        number, _, flags = _PAGE_FLAGS.unpack_from(page)
        lower = _PAGE_BOUNDS.unpack_from(page, 12)[0]
        if number != pgno or not _PAGE_HEADER <= lower <= self.psize:
            return None
        offsets = list(struct.unpack_from(f"<{(lower - _PAGE_HEADER) // 2}H", page, _PAGE_HEADER))
        if any(not lower <= offset <= self.psize - _NODE.size for offset in offsets):
            return None
        return flags, page, offsets

    def leaf(self, key: bytes) -> list[tuple[bytes, tuple[int, int] | bytes]] | None:
        """The records of the leaf page where ``key`` belongs, in key order: each key with
        the file extent of its value on overflow pages, or the value itself if it lives in
        the leaf. None if a page is not as expected."""
        pgno = self.root
        for _ in range(64):  # deeper than any real tree: a loop in damaged pages
            found = self._nodes(pgno)
            if found is None:
                return None
            flags, page, offsets = found
            if flags & _P_LEAF:
                return self._leaf(page, offsets)
            if not flags & _P_BRANCH or not offsets:
                return None
            # The last child whose separator is <= key; the first child has none.
            child = 0
            for i in range(1, len(offsets)):
                size = _NODE.unpack_from(page, offsets[i])[3]
                start = offsets[i] + _NODE.size
                if page[start : start + size] > key:
                    break
                child = i
            low, high, top, _ = _NODE.unpack_from(page, offsets[child])
            pgno = low | high << 16 | top << 32
        return None

    def _leaf(
        self, page: bytes, offsets: list[int]
    ) -> list[tuple[bytes, tuple[int, int] | bytes]] | None:
        out: list[tuple[bytes, tuple[int, int] | bytes]] = []
        for offset in offsets:
            low, high, flags, key_size = _NODE.unpack_from(page, offset)
            start = offset + _NODE.size
            key, size = page[start : start + key_size], low | high << 16
            if start + key_size + (8 if flags & _F_BIGDATA else size) > self.psize:
                return None
            if flags & _F_BIGDATA:
                overflow = struct.unpack_from("<Q", page, start + key_size)[0]
                begin = overflow * self.psize + _PAGE_HEADER
                if overflow >= self.pages or begin + size > self.pages * self.psize:
                    return None
                out.append((key, (begin, begin + size)))
            else:
                out.append((key, page[start + key_size : start + key_size + size]))
        return out


def _decode(value: memoryview | bytes) -> Record:
    label, width, height, crc, key_len = _HEADER.unpack_from(value)
    key_end = _HEADER.size + key_len
    key = bytes(value[_HEADER.size : key_end]).decode("utf-8", "surrogateescape")
    return Record(key, label, bytes(value[key_end:]), width, height, crc)


class LMDBReader(SharedEnvReader):
    """Reader of a seqstore LMDB store.

    Parameters
    ----------
    location
        The store directory.
    readahead
        Let the OS read around every page fault of the memory map. Off by default on Linux,
        where a block's values are read from their file extents (see
        :meth:`_read_located`) and a fault is only ever a page of the B-tree, for which
        reading megabytes around it (the kernel's default) is waste; on by default
        elsewhere, where blocks are read through the map alone.
    direct_io
        Read a block that is not in the page cache with ``O_DIRECT``, in one request per
        4 MB, and cut its records from that read (see :mod:`seqstore.backends.ranges`).
        Default: when the store is larger than this machine's memory.
    """

    layout_versions: ClassVar[tuple[int, ...]] = (2,)
    labels_apart = True

    def __init__(
        self,
        location: str | os.PathLike[str],
        *,
        readahead: bool | None = None,
        direct_io: bool | None = None,
    ) -> None:
        super().__init__(location)
        self.readahead = sys.platform != "linux" if readahead is None else readahead
        self._manifest = read_store_manifest(self.path)
        self._check_files()
        self._ranges = FileRanges(self.path / DATA_FILE, direct=direct_io)
        self._page_size: ProcessLocal[int] = ProcessLocal()

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    def _env_options(self) -> dict[str, Any]:
        return {"readahead": self.readahead, "max_readers": 1024}

    def close(self) -> None:
        # docstring inherited
        super().close()
        self._ranges.close()
        self._page_size.close()

    def _prime(self, cursor: lmdb.Cursor, start: int, stop: int) -> None:
        """Read the file extent of records ``start`` to ``stop - 1`` in one large read.

        Records are appended in key order, so a block's values lie back to back in the file,
        from the first record's value (or leaf page) to the end of the last one's. Walked
        through the map, every page of a value is a page fault (py-lmdb touches each page of
        a value it hands out), which on a cold, slow disk is an I/O of its own; read
        first, the pages are in the page cache when the walk copies them.
        """
        first = _node_extent(cursor, start, self._psize)
        last = _node_extent(cursor, stop - 1, self._psize) if stop - start > 1 else first
        if first is None or last is None:
            return
        lo, hi = first[0], last[1]
        if self._plausible(start, stop, hi - lo):
            self._ranges.prime(lo, hi - lo)

    def _plausible(self, start: int, stop: int, extent: int) -> bool:
        """Whether records ``start`` to ``stop - 1`` may really span ``extent`` bytes: never
        more than a few times what they are expected to take."""
        expected = (stop - start) * (self.manifest.mean_record_bytes + 4096) * 4 + GAP
        return 0 < extent <= expected

    def _read_located(self, start: int, stop: int) -> list[Record] | None:
        """Records ``start`` to ``stop - 1`` read without walking the memory map: their
        values' file extents, from the leaf pages (:class:`_Tree`), read as
        :meth:`FileRanges.read_extents` does (runs of neighbouring values, each one
        ``pread``, or one ``O_DIRECT`` read if the reader reads ``direct`` and the run is
        not cached). None when the leaves are not as expected, or their extents implausible,
        for the memory map to read the records.

        The leaf pages are read through a map of the file, a page at a time; there is one
        per hundred-odd records, and they stay cached. A value small enough to live in its
        leaf is read from there.
        """
        tree = _Tree(self._ranges.map, self._psize)
        values: list[tuple[int, int] | bytes] = []
        while len(values) < stop - start:
            want = _index_key(start + len(values))
            leaf = tree.leaf(want)
            keys = [key for key, _ in leaf] if leaf is not None else []
            if leaf is None or want not in keys:
                return None
            for key, value in leaf[keys.index(want) :]:
                if len(values) == stop - start or key != _index_key(start + len(values)):
                    break
                values.append(value)
        extents = [(v[0], v[1] - v[0]) for v in values if isinstance(v, tuple)]
        if not self._plausible(start, stop, sum(length for _, length in extents)):
            return None
        pieces = iter(self._ranges.read_extents(extents))
        return [_decode(next(pieces) if isinstance(v, tuple) else v) for v in values]

    @property
    def _psize(self) -> int:
        return self._page_size.get(lambda: int(self.env.stat()["psize"]))

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        out: list[Record] = []
        try:
            with self.env.begin(buffers=True) as txn:
                cursor = txn.cursor()
                if not self.readahead:  # else the kernel reads around each fault instead
                    located = self._read_located(start, stop)
                    if located is not None:
                        return located
                    self._prime(cursor, start, stop)
                if not cursor.set_key(_index_key(start)):
                    raise CorruptStoreError(
                        f"record {start} is missing from LMDB store '{self.path}'; "
                        "re-create it with seqstore convert"
                    )
                for value in cursor.iternext(keys=False, values=True):
                    out.append(_decode(value))
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
        try:
            with self.env.begin() as txn:
                labels, checksums = txn.get(_LABELS_KEY), txn.get(_CHECKSUMS_KEY)
        except lmdb.Error as exc:
            raise self._damaged(exc) from None
        if labels is None or checksums is None:
            raise CorruptStoreError(
                f"LMDB store '{self.path}' lacks its index; re-create it with seqstore convert"
            )
        return labels, checksums

    def _checked_index(self) -> tuple[bytes, bytes]:
        labels, checksums = self._index()
        n = self.manifest.num_records
        if len(labels) != 4 * n or index_digest(labels, checksums) != self.manifest.index_digest:
            raise CorruptStoreError(
                f"the index of LMDB store '{self.path}' does not match its manifest (damaged "
                "or edited); re-create the store with seqstore convert"
            )
        return labels, checksums

    def check_index(self) -> None:
        # docstring inherited
        self._checked_index()

    def labels(self) -> np.ndarray:
        # docstring inherited
        return np.frombuffer(self._checked_index()[0], np.int32).astype(np.int64)


class LMDBWriter(Writer):
    """Writer of a seqstore LMDB store.

    Records are committed in batches; when a batch does not fit in the map, the map is
    doubled and the batch retried, so no size has to be guessed up front. Each commit is a
    point a killed conversion can resume from (:meth:`~seqstore.backends.writer.Writer.checkpoint`).

    Parameters
    ----------
    path, classes, overwrite, provenance, resume
        See :class:`~seqstore.backends.writer.Writer`.
    batch_bytes
        Bytes of records per write transaction.
    """

    format = "lmdb"
    format_version = 2
    data_files = (DATA_FILE,)
    resumable = True

    def __init__(
        self, path: str | os.PathLike[str], *, batch_bytes: int = 64 << 20, **kwargs: Any
    ) -> None:
        self.batch_bytes = batch_bytes
        super().__init__(path, **kwargs)

    def _open(self) -> None:
        self._env = lmdb.open(
            str(self.directory),
            subdir=True,
            map_size=_INITIAL_MAP_SIZE,
            metasync=False,
            sync=False,
            meminit=False,
            max_dbs=0,
        )
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_size = 0
        self._labels: list[int] = []
        self._checksums: list[int] = []

    def _reopen(self) -> None:
        self._open()
        self._env.set_mapsize(
            max(_INITIAL_MAP_SIZE, (self.directory / DATA_FILE).stat().st_size * 2)
        )
        n = self.num_records
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor()
                if cursor.set_range(_index_key(n)):  # records past the checkpoint: cut them
                    while cursor.delete():
                        pass
                for value in txn.cursor().iternext(keys=False, values=True):
                    if len(self._labels) == n:
                        break
                    label, _w, _h, crc, _k = _HEADER.unpack_from(value)
                    self._labels.append(label)
                    self._checksums.append(crc)
        except lmdb.Error as exc:
            raise self._failed(exc) from None
        if len(self._labels) != n:
            raise CorruptStoreError(
                f"the checkpoint of '{self.path}' counts {n} records but its data holds "
                f"{len(self._labels)}; convert again without --resume"
            )

    def _write(self, record: Record) -> None:
        value = _encode(record)
        self._batch.append((_index_key(self.num_records), value))
        self._batch_size += len(value)
        self._labels.append(record.label)
        self._checksums.append(record.checksum)
        if self._batch_size >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._put(self._batch, append=True)
        self._batch = []
        self._batch_size = 0

    def _put(self, items: list[tuple[bytes, bytes]], *, append: bool) -> None:
        ensure_space(self.directory, sum(len(v) for _, v in items) * 2)
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    consumed, added = txn.cursor().putmulti(items, append=append)
                    if added != len(items):
                        raise RuntimeError(f"LMDB store '{self.path}' refused duplicate keys")
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                raise self._failed(exc) from None

    def _failed(self, exc: lmdb.Error) -> SeqstoreError:
        free = shutil.disk_usage(self.directory).free
        return SeqstoreError(
            f"writing LMDB store '{self.path}' failed ({exc}; {free / 1e6:.0f} MB free on its "
            "disk); free some space or choose another destination, then convert again"
        )

    def _sync(self) -> None:
        self._flush()
        self._env.sync(True)

    def _finish(self) -> None:
        self._flush()
        self._index = (
            np.asarray(self._labels, np.int32).tobytes(),
            np.asarray(self._checksums, np.uint32).tobytes(),
        )
        self._put([(_LABELS_KEY, self._index[0]), (_CHECKSUMS_KEY, self._index[1])], append=False)
        self._env.sync(True)
        self._env.close()
        lock = self.directory / "lock.mdb"
        if lock.exists():
            lock.unlink()

    def _index_digest(self) -> str | None:
        return index_digest(*self._index)

    def _abort(self) -> None:
        if hasattr(self, "_env"):  # _open may have failed before making it
            self._env.close()


class LMDBBackend(Backend):
    """One LMDB environment per store; fast sequential cursors and cheap random access."""

    name: ClassVar[str] = "lmdb"
    description: ClassVar[str] = "LMDB B-tree, records under ordered keys"
    reader_cls = LMDBReader
    writer_cls = LMDBWriter

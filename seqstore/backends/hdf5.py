"""HDF5 stores: the image bytes of all records in one flat dataset, sliced by offsets.

Layout of ``data.h5`` inside a store directory::

    /images        uint8  (total_bytes,)   every record's encoded bytes, back to back
    /offsets       uint64 (n + 1,)         record i is images[offsets[i]:offsets[i + 1]]
    /keys          uint8  (key bytes,)     UTF-8 keys back to back
    /key_offsets   uint64 (n + 1,)
    /labels        int32  (n,)
    /widths        uint32 (n,)
    /heights       uint32 (n,)
    /checksums     uint32 (n,)            CRC-32 of each record (key, label, size, bytes)

The file's attributes ``seqstore_format`` and ``seqstore_format_version`` repeat the
manifest's. The manifest's ``index_digest`` is :func:`~seqstore.manifest.index_digest` of
the arrays ``offsets, key_offsets, labels, widths, heights, checksums``, in that order.

All datasets are chunked and resizable, so the writer appends in one pass without knowing
the count. A block of consecutive records is one contiguous slice of ``/images`` (one
sequential read), never one variable-length element per record. The per-record datasets
are the index whose digest the manifest keeps; each process checks it as it loads them.

libhdf5 does not survive a full disk: once a write fails for want of space, closing the file
(or the interpreter's exit) crashes the process. So the writer checks the free space before
every append and stops with one line while it still can.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from ..errors import CorruptStoreError
from ..manifest import Manifest, index_digest
from ..records import Record, encode_key
from .base import Backend
from .handles import ProcessLocal
from .ranges import FileRanges, cut_joined
from .reader import Reader
from .staging import read_store_manifest
from .writer import Writer, ensure_space

__all__ = ["HDF5Backend", "HDF5Reader", "HDF5Writer"]

DATA_FILE = "data.h5"
_BYTES_CHUNK = 1 << 20
_ROWS_CHUNK = 1 << 14
_PER_RECORD = ("labels", "widths", "heights", "checksums")
_DTYPES = {"labels": np.int32, "widths": np.uint32, "heights": np.uint32, "checksums": np.uint32}
_INDEX = ("offsets", "key_offsets", *_PER_RECORD)


def _index_digest(index: dict[str, np.ndarray]) -> str:
    return index_digest(*(np.ascontiguousarray(index[name]).tobytes() for name in _INDEX))


def _close_file(f: h5py.File) -> None:
    f.close()


class HDF5Reader(Reader):
    """Reader of a seqstore HDF5 store.

    The offsets and per-record arrays (a few bytes per record) are loaded once per process;
    image bytes are read block by block.

    Parameters
    ----------
    location
        The store directory.
    direct_io
        Read a block that is not in the page cache with ``O_DIRECT``, in one request per
        4 MB (see :mod:`seqstore.backends.ranges`). Default: when the store is larger than
        this machine's memory.
    """

    layout_versions: ClassVar[tuple[int, ...]] = (2,)
    labels_apart = True

    def __init__(self, location: str | os.PathLike[str], *, direct_io: bool | None = None) -> None:
        super().__init__(location)
        self._manifest = read_store_manifest(self.path)
        self._check_files()
        self._file: ProcessLocal[h5py.File] = ProcessLocal(_close_file)
        self._index: ProcessLocal[dict[str, np.ndarray]] = ProcessLocal()
        self._ranges = FileRanges(self.path / DATA_FILE, direct=direct_io)
        self._chunks: ProcessLocal[dict[str, tuple[int, np.ndarray] | None]] = ProcessLocal()

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def file(self) -> h5py.File:
        """This process's open ``data.h5``, opened on first use."""
        return self._file.get(self._open_file)

    def _open_file(self) -> h5py.File:
        self._check_files()
        try:
            # The chunk cache only helps re-reads; block reads are sequential and large.
            return h5py.File(self.path / DATA_FILE, "r", rdcc_nbytes=4 << 20)
        except OSError as exc:
            raise self._damaged(exc) from None

    def _damaged(self, exc: Exception) -> CorruptStoreError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CorruptStoreError(
            f"HDF5 store '{self.path}' is damaged ({reason}); re-create it with seqstore convert"
        )

    def close(self) -> None:
        # docstring inherited
        self._index.close()
        self._chunks.close()
        self._file.close()
        self._ranges.close()

    @property
    def index(self) -> dict[str, np.ndarray]:
        """Offsets and per-record arrays, read from the file once per process."""
        return self._index.get(self._load_index)

    def _load_index(self) -> dict[str, np.ndarray]:
        f = self.file
        try:
            index = {name: f[name][()] for name in _INDEX}
        except (OSError, KeyError) as exc:
            raise self._damaged(exc) from None
        n = self.manifest.num_records
        if len(index["offsets"]) != n + 1 or _index_digest(index) != self.manifest.index_digest:
            raise CorruptStoreError(
                f"the index of HDF5 store '{self.path}' does not match its manifest "
                "(damaged or edited); re-create the store with seqstore convert"
            )
        return index

    def check_index(self) -> None:
        # docstring inherited
        self._index.close()
        self._index.get(self._load_index)

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        try:
            return _read_records(self._read_bytes, self.index, start, stop)
        except (OSError, KeyError, ValueError) as exc:
            raise self._damaged(exc) from None

    @property
    def chunks(self) -> dict[str, tuple[int, np.ndarray] | None]:
        """:func:`chunk_table` of ``images`` and ``keys``, read once per process."""
        return self._chunks.get(
            lambda: {name: chunk_table(self.file[name]) for name in ("images", "keys")}
        )

    def _read_bytes(self, name: str, start: int, stop: int) -> bytes | memoryview:
        """Bytes ``start`` to ``stop - 1`` of dataset ``name``: its chunks read straight from
        the file with one ``pread`` per run of neighbouring chunks, rather than one read per
        chunk through libhdf5 (each an I/O of its own on a slow disk)."""
        table = self.chunks[name]
        if table is None or stop <= start:
            return _read_slice(self.file[name], start, stop)
        size, offsets = table
        first, last = start // size, (stop - 1) // size
        extents = within_chunks(offsets[first : last + 1].tolist(), first, size, start, stop)
        return cut_joined(self._ranges.read_extents(extents), 0, stop - start)

    def labels(self) -> np.ndarray:
        # docstring inherited
        return self.index["labels"].astype(np.int64)


def _read_records(
    read: Callable[[str, int, int], bytes | memoryview],
    index: dict[str, np.ndarray],
    start: int,
    stop: int,
) -> list[Record]:
    """Records ``start`` to ``stop - 1``: two slice reads (``read(dataset, lo, hi)``), of the
    image bytes and of the keys, cut by the offsets of ``index``."""
    rows = {name: index[name][start : stop + 1 if "offsets" in name else stop] for name in _INDEX}
    images = read("images", int(rows["offsets"][0]), int(rows["offsets"][-1]))
    keys = bytes(read("keys", int(rows["key_offsets"][0]), int(rows["key_offsets"][-1])))
    return cut_records(images, keys, rows)


def cut_records(
    images: bytes | memoryview, keys: bytes, rows: dict[str, np.ndarray]
) -> list[Record]:
    """The records of one block: its image bytes and key bytes, back to back, cut by the
    block's rows of the index (``offsets`` and ``key_offsets`` with one entry more than the
    records, and the per-record arrays)."""
    offsets = (rows["offsets"] - rows["offsets"][0]).tolist()
    key_offsets = (rows["key_offsets"] - rows["key_offsets"][0]).tolist()
    labels = rows["labels"].tolist()
    widths = rows["widths"].tolist()
    heights = rows["heights"].tolist()
    crcs = rows["checksums"].tolist()
    return [
        Record(
            keys[key_offsets[i] : key_offsets[i + 1]].decode("utf-8", "surrogateescape"),
            labels[i],
            bytes(images[offsets[i] : offsets[i + 1]]),
            widths[i],
            heights[i],
            crcs[i],
        )
        for i in range(len(labels))
    ]


def _read_slice(dataset: h5py.Dataset, start: int, stop: int) -> bytes:
    out = np.empty(stop - start, np.uint8)
    if stop > start:
        dataset.read_direct(out, np.s_[start:stop])
    return out.tobytes()


def within_chunks(
    chunk_offsets: list[int], first: int, size: int, start: int, stop: int
) -> list[tuple[int, int]]:
    """The file extents of bytes ``start`` to ``stop - 1`` of a one-dimensional uint8
    dataset in chunks of ``size``, whose chunks ``first``, ``first + 1`` ... lie at the file
    offsets ``chunk_offsets``: only each chunk's bytes in the range, since a block rarely
    begins or ends on a chunk boundary and whole chunks would read up to two chunks more."""
    extents = []
    for i, offset in enumerate(chunk_offsets, first):
        lo, hi = max(start, i * size), min(stop, (i + 1) * size)
        extents.append((offset + lo - i * size, hi - lo))
    return extents


def chunk_table(dataset: h5py.Dataset) -> tuple[int, np.ndarray] | None:
    """The chunk size of a one-dimensional dataset and the file offset of each of its
    chunks, in order; None when its chunks cannot be read as plain bytes (not chunked,
    filtered or compressed, or a chunk not allocated), so the caller reads through libhdf5.
    """
    if dataset.chunks is None or dataset.compression is not None:
        return None
    size = dataset.chunks[0]
    count = -(-dataset.shape[0] // size)
    offsets = np.full(count, -1, np.int64)
    plain = True

    def note(info: Any) -> None:
        nonlocal plain
        if info.filter_mask or info.size != size:
            plain = False
        else:
            offsets[info.chunk_offset[0] // size] = info.byte_offset

    if hasattr(dataset.id, "chunk_iter"):  # one pass over the chunk index (HDF5 >= 1.14)
        dataset.id.chunk_iter(note)
    else:
        for i in range(dataset.id.get_num_chunks()):
            note(dataset.id.get_chunk_info(i))
    if not plain or (offsets < 0).any():
        return None
    return size, offsets


class HDF5Writer(Writer):
    """Writer of a seqstore HDF5 store.

    Records are buffered and appended in batches of ``batch_bytes``, each after a check that
    the disk has room for it (see the module docstring).

    Parameters
    ----------
    path, classes, overwrite, provenance, resume
        See :class:`~seqstore.backends.writer.Writer`.
    batch_bytes
        Bytes of records buffered before each append.
    """

    format = "hdf5"
    format_version = 2
    data_files = (DATA_FILE,)
    resumable = True

    def __init__(
        self, path: str | os.PathLike[str], *, batch_bytes: int = 64 << 20, **kwargs: Any
    ) -> None:
        self.batch_bytes = batch_bytes
        super().__init__(path, **kwargs)

    def _open(self) -> None:
        ensure_space(self.directory, 0)
        f = h5py.File(self.directory / DATA_FILE, "w", libver="latest")
        self._file = f
        for name, chunk in (("images", _BYTES_CHUNK), ("keys", _ROWS_CHUNK)):
            f.create_dataset(name, (0,), np.uint8, maxshape=(None,), chunks=(chunk,))
        for name in ("offsets", "key_offsets"):
            f.create_dataset(
                name, data=np.zeros(1, np.uint64), maxshape=(None,), chunks=(_ROWS_CHUNK,)
            )
        for name in _PER_RECORD:
            f.create_dataset(name, (0,), _DTYPES[name], maxshape=(None,), chunks=(_ROWS_CHUNK,))
        f.attrs["seqstore_format"] = self.format
        f.attrs["seqstore_format_version"] = self.format_version
        # Single-writer/multiple-reader mode keeps the file readable however the writer
        # dies: a killed conversion's records can be read back (and resumed) from it.
        f.swmr_mode = True
        # Image bytes are copied once, into a buffer reused across batches, then appended.
        self._buffer = np.empty(self.batch_bytes, np.uint8)
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._image_end = 0
        self._key_end = 0

    def _reopen(self) -> None:
        # libhdf5 will not reopen for writing a file whose writer never closed it. It was
        # written in SWMR mode, so it opens as a SWMR reader; the checkpointed records are
        # copied out of it into a new file, each checked against its checksum.
        killed = self.directory / (DATA_FILE + ".killed")
        (self.directory / DATA_FILE).rename(killed)
        n, self.num_records, self.total_bytes = self.num_records, 0, 0
        self._open()
        try:
            with h5py.File(killed, "r", swmr=True) as old:
                index = {name: old[name][: n + 1 if "offsets" in name else n] for name in _INDEX}
                if len(index["offsets"]) != n + 1 or len(index["labels"]) != n:
                    raise ValueError(f"it holds fewer than the {n} records of its checkpoint")
                for start in range(0, n, _ROWS_CHUNK):
                    for record in _read_records(
                        lambda name, a, b: _read_slice(old[name], a, b),
                        index,
                        start,
                        min(start + _ROWS_CHUNK, n),
                    ):
                        if not record.verify():
                            raise ValueError(f"record '{record.key}' fails its checksum")
                        self.write(record)
        except (OSError, KeyError, ValueError) as exc:
            raise CorruptStoreError(f"the killed write's data file is damaged ({exc})") from None
        killed.unlink()

    def _write(self, record: Record) -> None:
        size = len(record.data)
        if self._pending_bytes + size > self.batch_bytes:
            self._flush()
        if size > self.batch_bytes:
            self._buffer = np.empty(size, np.uint8)
        self._buffer[self._pending_bytes : self._pending_bytes + size] = np.frombuffer(
            record.data, np.uint8
        )
        self._pending.append(record)
        self._pending_bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        f = self._file
        recs = self._pending
        keys = [encode_key(r.key) for r in recs]
        ensure_space(self.directory, self._pending_bytes + sum(map(len, keys)) + 40 * len(recs))
        image_ends = self._image_end + np.cumsum([len(r.data) for r in recs], dtype=np.uint64)
        key_ends = self._key_end + np.cumsum([len(k) for k in keys], dtype=np.uint64)
        _append(f["images"], self._buffer[: self._pending_bytes])
        _append(f["keys"], np.frombuffer(b"".join(keys), np.uint8))
        _append(f["offsets"], image_ends)
        _append(f["key_offsets"], key_ends)
        _append(f["labels"], np.array([r.label for r in recs], np.int32))
        _append(f["widths"], np.array([r.width for r in recs], np.uint32))
        _append(f["heights"], np.array([r.height for r in recs], np.uint32))
        _append(f["checksums"], np.array([r.checksum for r in recs], np.uint32))
        self._image_end = int(image_ends[-1])
        self._key_end = int(key_ends[-1])
        self._pending = []
        self._pending_bytes = 0

    def _sync(self) -> None:
        self._flush()
        self._file.flush()
        _fsync(self.directory / DATA_FILE)

    def _finish(self) -> None:
        self._flush()
        self._digest = _index_digest({name: self._file[name][()] for name in _INDEX})
        self._file.close()
        # The manifest that follows declares the store complete: the data must be on disk first.
        _fsync(self.directory / DATA_FILE)

    def _index_digest(self) -> str | None:
        return self._digest

    def _abort(self) -> None:
        if hasattr(self, "_file"):  # _open may have failed before making it
            self._file.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    n = dataset.shape[0]
    dataset.resize((n + len(values),))
    dataset[n:] = values


class HDF5Backend(Backend):
    """One HDF5 file per store, image bytes in one flat dataset for range reads."""

    name: ClassVar[str] = "hdf5"
    description: ClassVar[str] = "HDF5 file, flat byte dataset sliced by offsets"
    reader_cls = HDF5Reader
    writer_cls = HDF5Writer

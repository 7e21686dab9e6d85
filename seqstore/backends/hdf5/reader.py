"""Reading HDF5 stores (the layout: :mod:`.layout`), wherever their ``data.h5`` is.

h5py opens the file by its path where it is on this machine, and otherwise through a
:class:`~seqstore.io.fileobj.SourceFile` over its byte source (its superblock, object headers
and chunk indexes: small reads, served by a page cache). seqstore reads the data itself,
from the file offsets of the datasets' chunks, with one
:meth:`~seqstore.io.ranges.Source.read_extents` per block. How much it reads ahead depends
on the source:

- a source that is near (a local file, or a cached copy once it is there): the index (a few
  bytes per record) and the chunk tables load whole, once per process, and the index is
  checked against the manifest's digest at once;
- a far one (object storage): the index comes chunk by chunk as blocks need it, each chunk
  fetched once per process, and a block's chunk offsets are looked up for it, so that
  opening a store and its first batch cost the same whatever the store's size. Every record
  is checked against its CRC-32 as it is loaded (``verify``), which covers every field of
  the index a record uses; the index as a whole is checked once a process holds all of it
  (:meth:`HDF5Reader.labels` and :meth:`~HDF5Reader.check_index` fetch it all). A block then
  costs one request (two while its keys are new to the process).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h5py
import numpy as np

from ...errors import CorruptStoreError, SeqstoreError
from ...io.fileobj import SourceFile
from ...io.per_process import ProcessLocal
from ...io.places import Place
from ...io.ranges import Extent, Source, cut_joined
from ...manifest import Manifest
from ...records import Record
from ..reader import Reader, store_manifest
from .layout import (
    DATA_FILE,
    INDEX,
    chunk_table,
    cut_records,
    index_digest_of,
    read_slice,
    within_chunks,
)

__all__ = ["HDF5Reader"]


@dataclass
class _ProcessHandles:
    """What one process holds of a store's ``data.h5``."""

    file: h5py.File
    far: bool
    io: SourceFile | None = None
    # near: the whole index, and the chunk tables of the byte datasets
    index: dict[str, np.ndarray] | None = None
    tables: dict[str, tuple[int, np.ndarray] | None] | None = None
    # far: name -> chunk number -> the chunk's elements
    chunks: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    index_checked: bool = False


def _close(state: _ProcessHandles) -> None:
    state.file.close()


class HDF5Reader(Reader):
    """Reader of a seqstore HDF5 store, on a local disk or in object storage.

    Parameters
    ----------
    location
        The store directory, or its :class:`~seqstore.io.places.Place`.
    direct_io
        Read a block that is not in the page cache with ``O_DIRECT``, in one request per
        4 MB (see :mod:`seqstore.io.local`). Default: when the store is larger than this
        machine's memory.
    """

    layout_versions: ClassVar[tuple[int, ...]] = (2,)
    labels_apart = True

    def __init__(
        self, location: str | os.PathLike[str] | Place, *, direct_io: bool | None = None
    ) -> None:
        super().__init__(location)
        self._manifest = store_manifest(self.place)
        self.data: Source = self.open_data(DATA_FILE, direct=direct_io)
        self._state: ProcessLocal[_ProcessHandles] = ProcessLocal(_close)

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def reading_from(self) -> str:
        """Where this process reads the data from: its path, its URL, or a cached copy's
        path."""
        return self.data.reading_from

    # -- this process's handles -----------------------------------------------------------
    @property
    def state(self) -> _ProcessHandles:
        """This process's open file and index, opened on first use."""
        state = self._state.get(self._open)
        if state.io is not None and self.data.local_path is not None:
            # The cache's copy arrived after this process opened the file at its URL: h5py
            # reads the copy by its path from now on, as a local file, rather than through
            # a Python file object that calls back into this process for every read.
            self._state.close()
            state = self._state.get(self._open)
        return state

    @property
    def file(self) -> h5py.File:
        """This process's open ``data.h5``."""
        return self.state.file

    def _open(self) -> _ProcessHandles:
        path = self.data.local_path
        if path is not None and self.place.local is not None:
            self.open_data(DATA_FILE).close()  # checked again in each process
        try:
            if path is not None:
                # The chunk cache only helps re-reads; block reads are sequential and large.
                return _ProcessHandles(h5py.File(path, "r", rdcc_nbytes=4 << 20), far=False)
            # A failed read under libhdf5's open leaves it in a state that can crash the
            # process at exit: the file is checked first.
            self.data.check()
            io = SourceFile(self.data)
            state = _ProcessHandles(h5py.File(io, "r"), far=self.data.far, io=io)
        except OSError as exc:
            raise self._failure(exc, locals().get("io")) from None
        state.chunks = {name: {} for name in (*INDEX, "keys")}
        return state

    def close(self) -> None:
        # docstring inherited
        self._state.close()
        self.data.close()

    def _failure(self, exc: Exception, io: SourceFile | None = None) -> Exception:
        """What to raise for ``exc`` from h5py: the error of a request it made, if one
        failed under it, else the store is damaged."""
        if io is None:
            state = self._state.peek()
            io = state.io if state is not None else None
        if io is not None and io.failure is not None:
            failure, io.failure = io.failure, None
            return failure
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CorruptStoreError(
            f"HDF5 store '{self.place.where}' is damaged ({reason}); {self.place.remedy}"
        )

    def _mismatch(self) -> CorruptStoreError:
        return CorruptStoreError(
            f"the index of HDF5 store '{self.place.where}' does not match its manifest "
            f"(damaged or edited); {self.place.remedy}"
        )

    # -- the index ----------------------------------------------------------------------------
    def _whole_index(self, state: _ProcessHandles) -> dict[str, np.ndarray]:
        n = self.manifest.num_records
        if not state.far:
            if state.index is None:
                index = {name: state.file[name][()] for name in INDEX}
                if len(index["offsets"]) != n + 1 or index_digest_of(index) != (
                    self.manifest.index_digest
                ):
                    raise self._mismatch()
                state.index = index
            return state.index
        wanted = {name: (0, n + 1 if "offsets" in name else n) for name in INDEX}
        index, _ = self._fetch(state, wanted)
        if not state.index_checked:
            self._check_if_whole(state)
        return index

    @property
    def index(self) -> dict[str, np.ndarray]:
        """Offsets and per-record arrays, read from the file once per process."""
        return self._guarded(lambda: self._whole_index(self.state))

    def check_index(self) -> None:
        # docstring inherited
        self._state.close()
        self._guarded(lambda: self._whole_index(self.state))

    def labels(self) -> np.ndarray:
        # docstring inherited
        return self.index["labels"].astype(np.int64)

    def _guarded(self, read: Any) -> Any:
        try:
            return read()
        except SeqstoreError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise self._failure(exc) from None

    def _fetch(
        self,
        state: _ProcessHandles,
        wanted: dict[str, tuple[int, int]],
        extra: Sequence[Extent] = (),
    ) -> tuple[dict[str, np.ndarray], list[Any]]:
        """Elements ``[lo, hi)`` of each named dataset, and the ``extra`` byte extents of the
        file, in one :meth:`~seqstore.io.ranges.Source.read_extents`: the chunks this
        process does not hold yet and the extents, close ones in one request."""
        f = state.file
        todo: list[tuple[str, int, int]] = []  # name, chunk, elements in it
        extents: list[Extent] = []
        slow: list[tuple[str, int]] = []
        for name, (lo, hi) in wanted.items():
            if hi <= lo:
                continue
            ds = f[name]
            per = ds.chunks[0] if ds.chunks else len(ds)
            for c in range(lo // per, (hi - 1) // per + 1):
                if c in state.chunks[name]:
                    continue
                info = ds.id.get_chunk_info_by_coord((c * per,)) if ds.chunks else None
                whole = per * ds.dtype.itemsize
                if (
                    info is None
                    or info.byte_offset is None
                    or info.filter_mask
                    or (info.size != whole)
                ):
                    slow.append((name, c))
                    continue
                todo.append((name, c, min(per, len(ds) - c * per)))
                extents.append((int(info.byte_offset), whole))
        datas = self.data.read_extents([*extents, *extra]) if extents or extra else []
        for (name, c, count), data in zip(todo, datas, strict=False):
            state.chunks[name][c] = np.frombuffer(bytes(data), f[name].dtype)[:count]
        for name, c in slow:  # not laid out in plain chunks: through h5py
            ds = f[name]
            per = ds.chunks[0] if ds.chunks else len(ds)
            state.chunks[name][c] = ds[c * per : min((c + 1) * per, len(ds))]
        if (todo or slow) and not state.index_checked:
            self._check_if_whole(state)
        out = {}
        for name, (lo, hi) in wanted.items():
            ds = f[name]
            if hi <= lo:
                out[name] = np.empty(0, ds.dtype)
                continue
            per = ds.chunks[0] if ds.chunks else len(ds)
            first, last = lo // per, (hi - 1) // per
            have = state.chunks[name]
            joined = np.concatenate([have[c] for c in range(first, last + 1)])
            out[name] = joined[lo - first * per : hi - first * per]
        return out, datas[len(todo) :]

    def _check_if_whole(self, state: _ProcessHandles) -> None:
        """Check the index against the manifest once this process holds all of it."""
        f = state.file
        parts = {}
        for name in INDEX:
            ds = f[name]
            per = ds.chunks[0] if ds.chunks else len(ds)
            count = -(-len(ds) // per) if len(ds) else 0
            have = state.chunks[name]
            if len(have) < count:
                return
            parts[name] = (
                np.concatenate([have[c] for c in range(count)]) if count else np.empty(0, ds.dtype)
            )
        n = self.manifest.num_records
        if len(parts["offsets"]) != n + 1 or index_digest_of(parts) != self.manifest.index_digest:
            raise self._mismatch()
        state.index_checked = True

    # -- blocks -------------------------------------------------------------------------------
    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        return self._guarded(lambda: self._read_block(self.state, start, stop))

    def _read_block(self, state: _ProcessHandles, start: int, stop: int) -> list[Record]:
        if not state.far:
            index = self._whole_index(state)
            rows = {n: index[n][start : stop + 1 if "offsets" in n else stop] for n in INDEX}
            near = self._near_bytes(state, "images", rows["offsets"])
            keys = bytes(self._near_bytes(state, "keys", rows["key_offsets"]))
            return cut_records(near, keys, rows)
        rows, _ = self._fetch(
            state, {name: (start, stop + 1 if "offsets" in name else stop) for name in INDEX}
        )
        lo, hi = int(rows["offsets"][0]), int(rows["offsets"][-1])
        images_ds = state.file["images"]
        extents = _chunk_extents(images_ds, lo, hi)
        # The block's image chunks (one run where they lie close: one GET) and the keys'
        # chunks this process lacks, in one round of requests.
        key_span = (int(rows["key_offsets"][0]), int(rows["key_offsets"][-1]))
        keys_rows, pieces = self._fetch(state, {"keys": key_span}, extents or ())
        images: bytes | memoryview
        if hi <= lo:
            images = b""
        elif extents is None:  # not laid out in plain chunks: through h5py
            images = images_ds[lo:hi].tobytes()
        else:
            images = cut_joined(pieces, 0, hi - lo)
        return cut_records(images, keys_rows["keys"].tobytes(), rows)

    def _near_bytes(
        self, state: _ProcessHandles, name: str, offsets: np.ndarray
    ) -> bytes | memoryview:
        """Bytes ``offsets[0]`` to ``offsets[-1] - 1`` of dataset ``name``: its chunks read
        straight from the file with one read per run of neighbouring chunks, rather than one
        read per chunk through libhdf5 (each an I/O of its own on a slow disk)."""
        start, stop = int(offsets[0]), int(offsets[-1])
        if state.tables is None:
            state.tables = {n: chunk_table(state.file[n]) for n in ("images", "keys")}
        table = state.tables[name]
        if table is None or stop <= start:
            return read_slice(state.file[name], start, stop)
        size, chunk_offsets = table
        first, last = start // size, (stop - 1) // size
        extents = within_chunks(chunk_offsets[first : last + 1].tolist(), first, size, start, stop)
        return cut_joined(self.data.read_extents(extents), 0, stop - start)


def _chunk_extents(dataset: h5py.Dataset, start: int, stop: int) -> list[Extent] | None:
    """The ``(offset, length)`` in the file of elements ``start`` to ``stop - 1`` of a
    one-dimensional uint8 dataset, a piece per chunk, in order; None when a chunk
    cannot be read as plain bytes (filtered, or not allocated): read through h5py then.

    Looked up chunk by chunk, unlike a near source's whole chunk table: over a URL the
    table of a large store is many small requests, and a block needs a few chunks.
    """
    if dataset.chunks is None or dataset.compression is not None or stop <= start:
        return None
    size = dataset.chunks[0]
    offsets = []
    for first in range(start - start % size, stop, size):
        info = dataset.id.get_chunk_info_by_coord((first,))
        if info.byte_offset is None or info.filter_mask or info.size != size:
            return None
        offsets.append(int(info.byte_offset))
    return within_chunks(offsets, start // size, size, start, stop)

"""HDF5 stores behind a URL, read block by block with ranged GETs.

The store's layout is :mod:`seqstore.backends.hdf5`'s. h5py opens ``data.h5`` through a
:class:`~seqstore.backends.ranges.RangeFileIO` (its superblock, object headers and chunk
indexes: small reads, served by a page cache), and seqstore reads the data itself:

- the index (offsets, labels, checksums ...) chunk by chunk as blocks need it, each chunk
  fetched once per process, so that opening a store and its first batch cost the same
  whatever the store's size;
- a block's image bytes in one ranged GET, from the file offsets of the ``images``
  dataset's chunks (the writer lays them out one after the other), and its keys with it.

So once a process has the index chunks its blocks need, a block costs one GET (two while
the keys of its records are new to the process). Every record is checked against its CRC-32
as it is loaded (``verify``), which covers every field of the index that a record uses; the
index as a whole is checked against the manifest's digest as soon as a process has all of
it (:meth:`RemoteHDF5Reader.labels` and :meth:`~RemoteHDF5Reader.check_index` fetch it all).

With a cache (``cache_dir``), the first process to read the store downloads ``data.h5``
whole into it in the background, and every process switches to the local copy once it is
there; until then, and when the file does not fit the cache, blocks come by ranged GET.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from ..backends.handles import ProcessLocal
from ..backends.hdf5 import _INDEX, DATA_FILE, _index_digest, cut_records, within_chunks
from ..backends.ranges import ByteRanges, FileRanges, RangeFileIO, cut_joined
from ..backends.reader import Reader, check_layout
from ..errors import CorruptStoreError, SeqstoreError
from ..manifest import Manifest
from ..records import Record
from .cache import ShardCache, cache_key
from .location import Remote, RemoteFile, object_version

__all__ = ["RemoteHDF5Reader"]

_CACHE_CHECK_S = 0.5  # how often a process looks for a cached copy while reading remotely
_TOUCH_S = 30.0  # how often a process marks the cached copy it reads as recently used


@dataclass
class _Open:
    """What one process holds of a remote HDF5 store."""

    source: ByteRanges
    where: str  # the URL, or the cached copy's path
    io: RangeFileIO
    file: h5py.File
    # name -> chunk number -> the chunk's elements
    chunks: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    index_checked: bool = False
    checked_cache: float = 0.0
    touched: float = 0.0

    def close(self) -> None:
        self.file.close()
        self.source.close()


def _close(state: _Open) -> None:
    state.close()


class RemoteHDF5Reader(Reader):
    """Reader of a seqstore HDF5 store at a URL.

    Made by :func:`seqstore.open` for a URL; see the module docstring for how it reads.

    Parameters
    ----------
    location
        The store's URL.
    remote
        Where it is and how to reach it.
    manifest
        Its manifest, as fetched.
    cache
        Where to keep a whole copy of ``data.h5``; None reads every block remotely.
    """

    layout_versions: ClassVar[tuple[int, ...]] = (2,)

    def __init__(
        self,
        location: str,
        *,
        remote: Remote,
        manifest: Manifest,
        cache: ShardCache | None = None,
    ) -> None:
        super().__init__(location)
        self.remote = remote
        self.cache = cache
        self._manifest = manifest
        check_layout(manifest, location, self.layout_versions)
        self.data_url = remote.join(DATA_FILE)
        self.data_size = manifest.data_files.get(DATA_FILE, -1)
        self.version = self._check_data()
        # The process that just checked the data file opens it without asking again, once.
        self._checked_in: int | None = os.getpid()
        self.cache_key = cache_key(self.data_url, f"{manifest.store_id}:{self.version}")
        self._state: ProcessLocal[_Open] = ProcessLocal(_close)

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    def _check_data(self) -> str:
        """The data file's version, once its size is the manifest's."""
        try:
            info = self.remote.info(self.data_url)
        except FileNotFoundError:
            raise CorruptStoreError(
                f"store '{self.location}' lacks its data file '{DATA_FILE}'; upload the store "
                "again with seqstore convert"
            ) from None
        if info.get("size") != self.data_size:
            raise CorruptStoreError(
                f"data file '{self.data_url}' is {info.get('size')} bytes, not the "
                f"{self.data_size} its manifest records (replaced or cut short); upload the "
                "store again with seqstore convert"
            )
        return object_version(info)

    # -- this process's handles -----------------------------------------------------------
    @property
    def state(self) -> _Open:
        """This process's open file and index chunks, opened on first use."""
        state = self._state.get(self._open)
        if self.cache is not None and not isinstance(state.source, FileRanges):
            self._look_for_copy(state)
        elif self.cache is not None and time.monotonic() - state.touched > _TOUCH_S:
            state.touched = time.monotonic()
            self.cache.touch(self.cache_key)
        return state

    def _open(self) -> _Open:
        local = self._cached_copy()
        source: ByteRanges
        if local is not None:
            source, where = local, str(local.path)
        else:
            checked, self._checked_in = self._checked_in == os.getpid(), None
            if not checked and self._check_data() != self.version:
                raise CorruptStoreError(
                    f"store '{self.location}' was replaced after this reader opened it; "
                    "open it again"
                )
            source, where = RemoteFile(self.remote, self.data_url, self.data_size), self.data_url
            if self.cache is not None:
                self._fill_cache()
        io = RangeFileIO(source, self.data_size, where)
        try:
            file = h5py.File(io, "r")
        except OSError as exc:
            source.close()
            if io.failure is not None:  # the request failed, not the file
                raise io.failure from None
            raise self._damaged(exc) from None
        return _Open(source, where, io, file, {name: {} for name in (*_INDEX, "keys")})

    def _cached_copy(self) -> FileRanges | None:
        """The whole copy of ``data.h5`` in the cache, if it is there."""
        if self.cache is None:
            return None
        entry = self.cache.get(self.cache_key)
        if entry is None:
            return None
        local = FileRanges(entry / DATA_FILE)
        try:
            # Opened now: a copy evicted from here on stays readable through it.
            size = os.fstat(local.fd).st_size
        except FileNotFoundError:  # evicted meanwhile
            return None
        if size != self.data_size:
            local.close()
            self.cache.remove(self.cache_key)
            return None
        return local

    def _look_for_copy(self, state: _Open) -> None:
        now = time.monotonic()
        if now - state.checked_cache < _CACHE_CHECK_S:
            return
        state.checked_cache = state.touched = now
        local = self._cached_copy()
        if local is None:
            self._fill_cache()  # again, if this process's last try failed long enough ago
        else:
            # The same bytes: h5py's open file and the index chunks stay valid.
            state.source.close()
            state.source = state.io.source = local
            state.where = str(local.path)
            state.io.drop_pages()

    def _fill_cache(self) -> None:
        assert self.cache is not None
        self.cache.fill_in_background(
            self.cache_key, self.data_size, self._download, what=self.data_url
        )

    def _download(self, directory: Path) -> None:
        target = directory / DATA_FILE
        self.remote.get_file(self.data_url, target)
        if target.stat().st_size != self.data_size or self._check_data() != self.version:
            raise CorruptStoreError(f"'{self.data_url}' changed while it was downloaded")

    def close(self) -> None:
        # docstring inherited
        self._state.close()

    @property
    def reading_from(self) -> str:
        """Where this process reads blocks from now: the URL, or the cached copy's path."""
        return self.state.where

    # -- index ------------------------------------------------------------------------------
    def _failure(self, exc: Exception) -> Exception:
        """What to raise for ``exc`` from h5py: the error of a request it made, if one
        failed under it, else the store is damaged."""
        state = self._state.get(self._open)
        failure, state.io.failure = state.io.failure, None
        return failure if failure is not None else self._damaged(exc)

    def _damaged(self, exc: Exception) -> CorruptStoreError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CorruptStoreError(
            f"HDF5 store '{self.location}' is damaged ({reason}); upload it again with "
            "seqstore convert"
        )

    def _fetch(
        self,
        state: _Open,
        wanted: dict[str, tuple[int, int]],
        extra: Sequence[tuple[int, int]] = (),
    ) -> tuple[dict[str, np.ndarray], list[Any]]:
        """Elements ``[lo, hi)`` of each named dataset, and the ``extra`` byte extents of the
        file, in one :meth:`~seqstore.backends.ranges.ByteRanges.read_extents`: the chunks
        this process does not hold yet and the extents, close ones in one request."""
        f = state.file
        todo: list[tuple[str, int, int]] = []  # name, chunk, elements in it
        extents: list[tuple[int, int]] = []
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
        datas = state.source.read_extents([*extents, *extra]) if extents or extra else []
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

    def _check_if_whole(self, state: _Open) -> None:
        """Check the index against the manifest once this process holds all of it."""
        f = state.file
        parts = {}
        for name in _INDEX:
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
        if len(parts["offsets"]) != n + 1 or _index_digest(parts) != self.manifest.index_digest:
            raise CorruptStoreError(
                f"the index of HDF5 store '{self.location}' does not match its manifest "
                "(damaged or edited); upload the store again with seqstore convert"
            )
        state.index_checked = True

    def _whole_index(self) -> dict[str, np.ndarray]:
        n = self.manifest.num_records
        wanted = {name: (0, n + 1 if "offsets" in name else n) for name in _INDEX}
        try:
            state = self.state
            index, _ = self._fetch(state, wanted)
        except SeqstoreError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise self._failure(exc) from None
        if not state.index_checked:
            self._check_if_whole(state)
        return index

    def check_index(self) -> None:
        # docstring inherited
        self._state.close()
        self._whole_index()

    def labels(self) -> np.ndarray:
        # docstring inherited
        return self._whole_index()["labels"].astype(np.int64)

    # -- blocks -----------------------------------------------------------------------------
    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        try:
            return self._read_block(self.state, start, stop)
        except SeqstoreError:
            raise
        except (OSError, KeyError, ValueError) as exc:
            raise self._failure(exc) from None

    def _read_block(self, state: _Open, start: int, stop: int) -> list[Record]:
        rows, _ = self._fetch(
            state,
            {
                "offsets": (start, stop + 1),
                "key_offsets": (start, stop + 1),
                "labels": (start, stop),
                "widths": (start, stop),
                "heights": (start, stop),
                "checksums": (start, stop),
            },
        )
        offsets, key_offsets = rows["offsets"], rows["key_offsets"]
        lo, hi = int(offsets[0]), int(offsets[-1])
        f = state.file
        images_ds = f["images"]
        extents = _chunk_extents(images_ds, lo, hi)
        # The block's image chunks (one run where they lie close: one GET) and the keys'
        # chunks this process lacks, in one round of requests.
        keys_rows, pieces = self._fetch(
            state, {"keys": (int(key_offsets[0]), int(key_offsets[-1]))}, extents or ()
        )
        keys = keys_rows["keys"].tobytes()
        images: bytes | memoryview
        if hi <= lo:
            images = b""
        elif extents is None:  # not laid out in plain chunks: through h5py
            images = images_ds[lo:hi].tobytes()
        else:
            images = cut_joined(pieces, 0, hi - lo)
        return cut_records(images, keys, rows)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.location}')"


def _chunk_extents(dataset: h5py.Dataset, start: int, stop: int) -> list[tuple[int, int]] | None:
    """The ``(offset, length)`` in the file of elements ``start`` to ``stop - 1`` of a
    one-dimensional uint8 dataset, a piece per chunk, in order; None when a chunk
    cannot be read as plain bytes (filtered, or not allocated): read through h5py then.

    Looked up chunk by chunk, unlike the local reader's whole chunk table: over a URL
    the table of a large store is many small requests, and a block needs a few chunks.
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

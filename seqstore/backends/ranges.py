"""Byte ranges of a store's data file: the one read interface of local and remote data.

A :class:`RangeSource` is a file that can be read at any offset: :class:`LocalFile` (one
``pread``) or, in :mod:`seqstore.remote`, an object behind a URL (one ranged GET, with
retries). A reader that knows where a block's bytes lie in its file asks for them in one
:meth:`RangeSource.read_range`, whatever the file is; :class:`RangeFileIO` makes a source a
read-only file object for libraries that want one (h5py's ``fileobj`` driver), with a small
page cache for their many small metadata reads; :func:`dataset_ranges` says where the
elements of a chunked HDF5 dataset lie in its file.

Nothing here imports h5py or fsspec.
"""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "LocalFile",
    "RangeFileIO",
    "RangeSource",
    "dataset_ranges",
    "read_dataset_bytes",
]


@runtime_checkable
class RangeSource(Protocol):
    """A file read by byte ranges.

    Attributes
    ----------
    name : str
        The file's path or URL, for messages.
    size : int
        Its length in bytes.
    """

    name: str
    size: int

    def read_range(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        ...

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Several ``(offset, length)`` ranges at once (a remote source fetches them
        concurrently)."""
        ...

    def close(self) -> None:
        """Release the file."""
        ...


class LocalFile:
    """A local file read with ``pread``: one system call per range, no shared position.

    Parameters
    ----------
    path
        The file.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        self._fd = os.open(self.name, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def read_range(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer only at the end of the file)."""
        out = os.pread(self._fd, length, offset)
        while len(out) < length and offset + len(out) < self.size:  # a short read: go on
            more = os.pread(self._fd, length - len(out), offset + len(out))
            if not more:
                break
            out += more
        return out

    def read_ranges(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The ranges one after the other."""
        return [self.read_range(offset, length) for offset, length in ranges]

    def close(self) -> None:
        """Close the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


class RangeFileIO(io.RawIOBase):
    """A read-only, seekable file object over a :class:`RangeSource`.

    Reads are served from an LRU cache of aligned pages; the pages a read misses are fetched
    in one range. Meant for a library's metadata reads (an HDF5 superblock, object headers,
    chunk indexes: many reads of a few hundred bytes); bulk data is better read from the
    source directly.

    Parameters
    ----------
    source
        The file. :attr:`source` may be replaced by another source of the same bytes (a
        local copy that has just been downloaded).
    page_size
        Bytes per cached page.
    cache_bytes
        The most bytes of pages kept.
    """

    def __init__(
        self, source: RangeSource, *, page_size: int = 256 << 10, cache_bytes: int = 16 << 20
    ) -> None:
        super().__init__()
        self.source = source
        self.page_size = page_size
        self._max_pages = max(1, cache_bytes // page_size)
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        #: The last error the source raised under a read: a library that calls this file
        #: (libhdf5) reports its own error instead, and the caller may raise this one.
        self.failure: Exception | None = None

    @property
    def name(self) -> str:
        return self.source.name

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            self._pos = offset
        elif whence == io.SEEK_CUR:
            self._pos += offset
        elif whence == io.SEEK_END:
            self._pos = self.source.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.pread(self._pos, len(view))
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` through the page cache."""
        end = min(offset + length, self.source.size)
        if end <= offset:
            return b""
        size = self.page_size
        first, last = offset // size, (end - 1) // size
        missing = [p for p in range(first, last + 1) if p not in self._pages]
        if missing:
            lo, hi = missing[0], missing[-1]  # one range over the gap: one request
            try:
                data = self.source.read_range(lo * size, (hi - lo + 1) * size)
            except Exception as exc:
                self.failure = exc
                raise
            for p in range(lo, hi + 1):
                if p not in self._pages:
                    self._pages[p] = data[(p - lo) * size : (p - lo + 1) * size]
        parts = []
        for p in range(first, last + 1):
            self._pages.move_to_end(p)
            parts.append(self._pages[p])
        while len(self._pages) > self._max_pages:
            self._pages.popitem(last=False)
        joined = b"".join(parts) if len(parts) > 1 else parts[0]
        return joined[offset - first * size : end - first * size]

    def drop_pages(self) -> None:
        """Forget every cached page."""
        self._pages.clear()


def dataset_ranges(dataset: Any, start: int, stop: int) -> list[tuple[int, int, int]] | None:
    """Where elements ``start`` to ``stop - 1`` of a 1-D HDF5 dataset lie in its file.

    Parameters
    ----------
    dataset
        An ``h5py.Dataset``, chunked and without filters (as seqstore writes them).
    start, stop
        Element positions, ``start < stop``.

    Returns
    -------
    list of (file_offset, length, element_offset) or None
        Byte ranges of the file, in element order, with the element each begins at;
        chunks that follow each other in the file are merged into one range. None when the
        dataset is not laid out so (filtered, compact, or a chunk not yet written): read it
        through h5py instead.
    """
    if dataset.chunks is None or dataset.compression or dataset.shuffle or dataset.fletcher32:
        return None
    per_chunk = dataset.chunks[0]
    item = dataset.dtype.itemsize
    ranges: list[tuple[int, int, int]] = []
    for c in range(start // per_chunk, (stop - 1) // per_chunk + 1):
        info = dataset.id.get_chunk_info_by_coord((c * per_chunk,))
        if info.byte_offset is None or info.size != per_chunk * item:
            return None
        lo = max(start, c * per_chunk)
        hi = min(stop, (c + 1) * per_chunk)
        offset = info.byte_offset + (lo - c * per_chunk) * item
        length = (hi - lo) * item
        if ranges and ranges[-1][0] + ranges[-1][1] == offset:
            prev = ranges[-1]
            ranges[-1] = (prev[0], prev[1] + length, prev[2])
        else:
            ranges.append((offset, length, lo))
    return ranges


def read_dataset_bytes(source: RangeSource, dataset: Any, start: int, stop: int) -> bytes:
    """The raw bytes of elements ``start`` to ``stop - 1`` of a 1-D HDF5 dataset, read from
    ``source`` (the dataset's file) in as few ranges as its chunks allow: one for
    consecutive chunks, as seqstore's writers lay a block's image bytes out.

    Ranges separated by a gap of at most 1 MiB are read as one range, gap included: one
    request costs more than a megabyte of transfer from object storage. A dataset that is
    not laid out in plain chunks is read through h5py.
    """
    if stop <= start:
        return b""
    ranges = dataset_ranges(dataset, start, stop)
    if ranges is None:
        return bytes(dataset[start:stop].tobytes())
    groups: list[list[tuple[int, int, int]]] = [[ranges[0]]]
    for r in ranges[1:]:
        last = groups[-1][-1]
        if r[0] >= last[0] + last[1] and r[0] - (last[0] + last[1]) <= 1 << 20:
            groups[-1].append(r)
        else:
            groups.append([r])
    spans = [(g[0][0], g[-1][0] + g[-1][1] - g[0][0]) for g in groups]
    datas = source.read_ranges(spans)
    parts = []
    for group, (base, _), data in zip(groups, spans, datas, strict=True):
        for offset, length, _element in group:
            part = data[offset - base : offset - base + length]
            if len(part) != length:
                raise OSError(f"'{source.name}' ends inside a chunk of '{dataset.name}'")
            parts.append(part)
    return b"".join(parts) if len(parts) > 1 else parts[0]

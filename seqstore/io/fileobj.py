"""A byte source as a read-only file object, for libraries that want one (h5py's
``fileobj`` driver)."""

from __future__ import annotations

import io
from collections import OrderedDict
from typing import Any

from .ranges import Source

__all__ = ["SourceFile"]


class SourceFile(io.RawIOBase):
    """A read-only, seekable file object over a :class:`~seqstore.io.ranges.Source`.

    Reads are served from an LRU cache of aligned pages, and the pages a read misses are
    fetched in one range: a library's metadata reads (an HDF5 superblock, object headers,
    chunk indexes: many reads of a few hundred bytes) then cost a request each only now and
    then. Bulk data is better read from the ranges directly.

    Parameters
    ----------
    source
        The file.
    page_size
        Bytes per cached page.
    cache_bytes
        The most bytes of pages kept.
    """

    def __init__(
        self,
        source: Source,
        *,
        page_size: int = 256 << 10,
        cache_bytes: int = 16 << 20,
    ) -> None:
        super().__init__()
        self.source = source
        self.size = source.size
        self._name = source.name
        self.page_size = page_size
        self._max_pages = max(1, cache_bytes // page_size)
        self._pages: OrderedDict[int, bytes] = OrderedDict()
        self._pos = 0
        #: The last error the source raised under a read: a library that calls this file
        #: (libhdf5) reports an error of its own instead, and the caller may raise this one.
        self.failure: Exception | None = None

    @property
    def name(self) -> str:
        return self._name

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
            self._pos = self.size + offset
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
        """``length`` bytes from ``offset`` (fewer past the end) through the page cache."""
        end = min(offset + length, self.size)
        if end <= offset:
            return b""
        size = self.page_size
        first, last = offset // size, (end - 1) // size
        missing = [p for p in range(first, last + 1) if p not in self._pages]
        if missing:
            lo, hi = missing[0], missing[-1]  # one range over the gap: one request
            stop = min((hi + 1) * size, self.size)
            try:
                data = bytes(self.source.read(lo * size, stop - lo * size))
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

"""A store's file read by byte range, in a few large reads.

On a device that serves few operations per second (a hard disk, a throttled or network
volume), what a block read costs is its number of reads, not its bytes. Read through a
memory map, a block of a few MB is hundreds of page faults, and through libhdf5 one read per
chunk; each is an I/O of its own once the page cache is cold. The readers find the byte
extents a block occupies in its file and read them here: extents that lie close together
are joined into one run, and each run is one ``pread``.

:class:`ByteRanges` is that interface: :class:`FileRanges` is its local file, and
:class:`seqstore.remote.RemoteFile` an object in object storage (each run one ranged GET).
:class:`RangeFileIO` makes any of them a read-only file object, for libraries that want
one (h5py's ``fileobj`` driver).
"""

from __future__ import annotations

import bisect
import io
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import CorruptStoreError
from .handles import ProcessLocal

__all__ = ["GAP", "ByteRanges", "FileRanges", "RangeFileIO", "coalesce"]

#: Extents less than this far apart are read as one run: on a disk, reading the gap costs
#: less than the seek a second read would.
GAP = 1 << 20
# Reads into a scratch buffer (to fill the page cache) go in pieces of this size, so that
# the buffer stays small however large the extent.
_SCRATCH = 8 << 20

Extent = tuple[int, int]  # (offset, length)


def coalesce(extents: Sequence[Extent], gap: int = GAP) -> list[Extent]:
    """The runs to read for ``extents``: sorted, with overlapping or close ones joined.

    Parameters
    ----------
    extents
        ``(offset, length)`` pairs, in any order.
    gap
        Join two extents when fewer than ``gap`` bytes separate them.

    Returns
    -------
    list of (offset, length)
        Disjoint runs in file order that cover every extent.
    """
    runs: list[list[int]] = []
    for offset, length in sorted(extents):
        if length <= 0:
            continue
        if runs and offset <= runs[-1][1] + gap:
            runs[-1][1] = max(runs[-1][1], offset + length)
        else:
            runs.append([offset, offset + length])
    return [(lo, hi - lo) for lo, hi in runs]


def split_runs(
    extents: Sequence[Extent], runs: Sequence[Extent], datas: Sequence[bytes | bytearray]
) -> list[memoryview]:
    """The bytes of each extent, in the order given, as views of the bytes ``datas`` of
    the runs (:func:`coalesce`'s) that hold them: no copies. An empty extent, which no run
    holds, is an empty view."""
    starts = [offset for offset, _ in runs]
    views = [memoryview(data) for data in datas]
    out = []
    for offset, length in extents:
        if length <= 0:
            out.append(memoryview(b""))
            continue
        i = bisect.bisect_right(starts, offset) - 1  # the run that holds the extent
        out.append(views[i][offset - starts[i] : offset - starts[i] + length])
    return out


def cut_joined(pieces: Sequence[bytes | memoryview], skip: int, length: int) -> memoryview:
    """Bytes ``skip`` to ``skip + length - 1`` of ``pieces`` laid end to end (a block's
    chunks, read as extents): a view of the one piece, or of the pieces joined once."""
    joined = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    return memoryview(joined)[skip : skip + length]


class ByteRanges(Protocol):
    """A file read by byte range: what a reader needs of its data file, local or remote."""

    def read(self, offset: int, length: int) -> bytes | bytearray:
        """``length`` bytes from ``offset``, in one read.

        Raises
        ------
        CorruptStoreError
            The file ends first.
        """
        ...

    def read_extents(
        self, extents: Sequence[Extent], gap: int = GAP
    ) -> list[memoryview] | list[bytes]:
        """The bytes of each ``(offset, length)`` extent, in the order given, read as
        :func:`coalesce`'s runs."""
        ...

    def close(self) -> None:
        """Release what this process holds of the file."""
        ...


def _close_fd(fd: int) -> None:
    os.close(fd)


class FileRanges:
    """Byte ranges of one local file, read with ``pread`` on a descriptor opened once per
    process (lazily, so the object can be handed to worker processes).

    Parameters
    ----------
    path
        The file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: ProcessLocal[int] = ProcessLocal(_close_fd)
        self._scratch: ProcessLocal[bytearray] = ProcessLocal()

    @property
    def fd(self) -> int:
        """This process's descriptor of the file."""
        return self._fd.get(lambda: os.open(self.path, os.O_RDONLY))

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the file's bytes from ``offset`` on.

        Raises
        ------
        CorruptStoreError
            The file ends first: it was truncated after its store was checked.
        """
        done = 0
        while done < len(buffer):
            got = os.preadv(self.fd, [buffer[done:]], offset + done)
            if got == 0:
                raise CorruptStoreError(
                    f"'{self.path}' ends at byte {offset + done}, inside a block being read "
                    "(truncated?); re-create the store with seqstore convert"
                )
            done += got

    def read(self, offset: int, length: int) -> bytearray:
        """``length`` bytes of the file from ``offset``, in one read (see :meth:`read_into`)."""
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return out

    def read_extents(self, extents: Sequence[Extent], gap: int = GAP) -> list[memoryview]:
        """The bytes of each extent, in the order given, read as :func:`coalesce`'s runs."""
        runs = coalesce(extents, gap)
        return split_runs(extents, runs, [self.read(offset, length) for offset, length in runs])

    def prime(self, offset: int, length: int) -> None:
        """Read the range into the page cache (and discard it), in large reads, so that
        what then reads it page by page (a memory map) is served from memory."""
        scratch = memoryview(self._scratch.get(lambda: bytearray(_SCRATCH)))
        end = min(offset + length, os.fstat(self.fd).st_size)
        while offset < end:
            step = min(end - offset, _SCRATCH)
            self.read_into(offset, scratch[:step])
            offset += step

    def close(self) -> None:
        """Close this process's descriptor."""
        self._fd.close()
        self._scratch.close()


class RangeFileIO(io.RawIOBase):
    """A read-only, seekable file object over :class:`ByteRanges`.

    Reads are served from an LRU cache of aligned pages, and the pages a read misses are
    fetched in one range: a library's metadata reads (an HDF5 superblock, object headers,
    chunk indexes: many reads of a few hundred bytes) then cost a request each only now and
    then. Bulk data is better read from the ranges directly.

    Parameters
    ----------
    source
        The file. :attr:`source` may be replaced by another source of the same bytes (a
        local copy that has just been downloaded).
    size
        The file's length.
    name
        The file's path or URL, for messages.
    page_size
        Bytes per cached page.
    cache_bytes
        The most bytes of pages kept.
    """

    def __init__(
        self,
        source: ByteRanges,
        size: int,
        name: str,
        *,
        page_size: int = 256 << 10,
        cache_bytes: int = 16 << 20,
    ) -> None:
        super().__init__()
        self.source = source
        self.size = size
        self._name = name
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

    def drop_pages(self) -> None:
        """Forget every cached page."""
        self._pages.clear()

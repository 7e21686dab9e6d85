"""A store's file read by byte range, in a few large reads.

On a device that serves few operations per second (a hard disk, a throttled or network
volume), what a block read costs is its number of reads, not its bytes. Read through a
memory map, a block of a few MB is hundreds of page faults, and through libhdf5 one read per
chunk; each is an I/O of its own once the page cache is cold. The readers find the byte
extents a block occupies in its file and read them here: extents that lie close together
are joined into one run, and each run is one ``pread``.

A store larger than memory cannot stay in the page cache from one epoch to the next, and on
such a device even a large buffered read is several requests: the page cache's pages are
scattered in memory, and a request holds a limited number of pieces (on a virtio disk, 254
pages: at most 1 MB). :class:`FileRanges` with ``direct=True`` reads what is not cached with
``O_DIRECT`` into a buffer of huge pages instead: one request per 4 MB, and no page cache
filled with data that would be evicted before it is read again. What is cached is read from
the cache either way.

:class:`ByteRanges` is that interface: :class:`FileRanges` is its local file, and
:class:`seqstore.remote.RemoteFile` an object in object storage (each run one ranged GET).
:class:`RangeFileIO` makes any of them a read-only file object, for libraries that want
one (h5py's ``fileobj`` driver).
"""

from __future__ import annotations

import bisect
import ctypes
import io
import mmap
import os
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import CorruptStoreError
from .handles import ProcessLocal

__all__ = [
    "GAP",
    "SMALL",
    "ByteRanges",
    "FileRanges",
    "RangeFileIO",
    "aligned_buffer",
    "coalesce",
    "direct_io_default",
]

#: Extents less than this far apart are read as one run: on a disk, reading the gap costs
#: less than the seek a second read would.
GAP = 1 << 20
# Reads into a scratch buffer (to fill the page cache) go in pieces of this size, so that
# the buffer stays small however large the extent.
_SCRATCH = 8 << 20

# O_DIRECT reads start and end on this boundary (the largest logical block size in use),
# into memory aligned to it.
_ALIGN = 4096
# A huge page: direct reads go into buffers aligned to it, so that the kernel can back them
# with huge pages (physically contiguous: a 4 MB read is one device request, not several).
_HUGE = 2 << 20

#: Runs of at most this many bytes are read through the page cache even by a ``direct``
#: :class:`FileRanges`.
SMALL = 256 << 10

Extent = tuple[int, int]  # (offset, length)


def direct_io_default(data_bytes: int) -> bool:
    """Whether a store of ``data_bytes`` is read with ``O_DIRECT`` when its reader is not
    told: on Linux, when the data is larger than this machine's memory, so that the page
    cache could not keep it from one epoch to the next anyway."""
    if sys.platform != "linux":
        return False
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return data_bytes > memory


def aligned_buffer(length: int) -> memoryview:
    """A writable, zero-filled buffer of ``length`` bytes at a huge-page-aligned address,
    backed by huge pages where the kernel allows (transparent huge pages on ``madvise``
    or ``always``): the memory an ``O_DIRECT`` read goes into. It is freed with the last
    view of it."""
    region = mmap.mmap(-1, length + _HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    skip = -ctypes.addressof(ctypes.c_char.from_buffer(region)) % _HUGE
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            region.madvise(mmap.MADV_HUGEPAGE, skip, length + _HUGE - skip)
        except OSError:  # no transparent huge pages: 4 KB pages, more requests per read
            pass
    return memoryview(region)[skip : skip + length]


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
    extents: Sequence[Extent],
    runs: Sequence[Extent],
    datas: Sequence[bytes | bytearray | memoryview],
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


def _close_optional_fd(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


# cachestat(2) (Linux 6.5): the number of a file range's pages in the page cache, for any
# file one can read. Its number in the generic system call table, and x86-64's.
_CACHESTAT = 451 if os.uname().machine in ("x86_64", "aarch64") else None


def _cached_pages(fd: int, offset: int, length: int) -> int | None:
    """How many pages of ``fd``'s range are in the page cache; None without cachestat."""
    if _libc is None or _CACHESTAT is None:
        return None
    span = (ctypes.c_uint64 * 2)(offset, length)
    stat = _CacheStat()
    if _libc.syscall(ctypes.c_long(_CACHESTAT), fd, span, ctypes.byref(stat), 0) != 0:
        return None
    return int(stat.cache)


class FileRanges:
    """Byte ranges of one local file, read with ``pread`` on a descriptor opened once per
    process (lazily, so the object can be handed to worker processes).

    Parameters
    ----------
    path
        The file.
    direct
        Read runs that are not all in the page cache with ``O_DIRECT`` (see the module's
        notes); where the file system refuses ``O_DIRECT``, read through the cache.
        None: :func:`direct_io_default` of the file's size.
    """

    def __init__(self, path: Path, *, direct: bool | None = False) -> None:
        self.path = path
        self.direct = direct_io_default(path.stat().st_size) if direct is None else direct
        self._fd: ProcessLocal[int] = ProcessLocal(_close_fd)
        self._direct_fd: ProcessLocal[int] = ProcessLocal(_close_optional_fd)
        self._map: ProcessLocal[mmap.mmap] = ProcessLocal(mmap.mmap.close)
        self._scratch: ProcessLocal[bytearray] = ProcessLocal()

    @property
    def fd(self) -> int:
        """This process's descriptor of the file."""
        return self._fd.get(lambda: os.open(self.path, os.O_RDONLY))

    def _open_direct(self) -> int:
        """A descriptor opened with ``O_DIRECT``, or -1 where that is refused."""
        if not hasattr(os, "O_DIRECT"):
            return -1
        try:
            return os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except OSError:  # EINVAL: a file system without O_DIRECT (tmpfs before Linux 6.6)
            return -1

    def _open_map(self) -> mmap.mmap:
        region = mmap.mmap(self.fd, os.fstat(self.fd).st_size, access=mmap.ACCESS_READ)
        if hasattr(mmap, "MADV_RANDOM"):
            # What is read through the map is a page here and there (LMDB's B-tree): the
            # kernel's read-around of each fault (megabytes) would be waste.
            region.madvise(mmap.MADV_RANDOM)
        return region

    @property
    def map(self) -> memoryview:
        """This process's read-only map of the file, as long as the file was when it was
        made: slicing it never reads past the file."""
        return memoryview(self._map.get(self._open_map))

    def cached(self, offset: int, length: int) -> bool:
        """Whether bytes ``offset`` to ``offset + length - 1`` are all in the page cache,
        told without reading them: by ``cachestat`` (Linux 6.5), else by ``mincore`` on a
        map of the file. ``mincore`` answers "all cached" for a file one neither owns nor
        may write, so such a file is taken as not cached there. Not Linux: True, so that
        the range is read through the cache."""
        if _libc is None or length <= 0:
            return True
        region = self._map.get(self._open_map)
        lo = offset - offset % mmap.PAGESIZE
        hi = min(offset + length, len(region))
        if hi <= lo:
            return True
        pages = -(-(hi - lo) // mmap.PAGESIZE)
        counted = _cached_pages(self.fd, lo, hi - lo)
        if counted is not None:
            return counted >= pages
        if os.fstat(self.fd).st_uid != os.geteuid() and not os.access(self.path, os.W_OK):
            return False
        address = int(np.frombuffer(region, np.uint8).ctypes.data)
        vector = bytearray(pages)  # one byte per page, bit 0: in memory
        into = (ctypes.c_ubyte * pages).from_buffer(vector)
        if _libc.mincore(ctypes.c_void_p(address + lo), ctypes.c_size_t(hi - lo), into) != 0:
            return False  # cannot tell: read as if not
        del into
        return bool((np.frombuffer(vector, np.uint8) & 1).all())

    def read_uncached(self, offset: int, length: int) -> memoryview:
        """``length`` bytes from ``offset``, read with ``O_DIRECT`` in one request per
        4 MB where the file system allows, through the page cache otherwise.

        Raises
        ------
        CorruptStoreError
            The file ends first.
        """
        fd = self._direct_fd.get(self._open_direct)
        if fd < 0:
            return memoryview(self.read(offset, length))
        lo = offset - offset % _ALIGN
        hi = -(-(offset + length) // _ALIGN) * _ALIGN
        buffer = aligned_buffer(hi - lo)
        done = 0
        while done < hi - lo:
            got = os.preadv(fd, [buffer[done:]], lo + done)
            done += got
            if got < _ALIGN or done % _ALIGN:  # the end of the file
                break
        if lo + done < offset + length:
            self._ended(lo + done)
        return buffer[offset - lo : offset - lo + length]

    def _ended(self, at: int) -> None:
        raise CorruptStoreError(
            f"'{self.path}' ends at byte {at}, inside a block being read "
            "(truncated?); re-create the store with seqstore convert"
        )

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
                self._ended(offset + done)
            done += got

    def read(self, offset: int, length: int) -> bytearray:
        """``length`` bytes of the file from ``offset``, in one read (see :meth:`read_into`)."""
        out = bytearray(length)
        self.read_into(offset, memoryview(out))
        return out

    def read_run(self, offset: int, length: int) -> bytearray | memoryview:
        """``length`` bytes from ``offset`` in one read: :meth:`read_uncached` if this
        object reads ``direct``, they are not all cached and they are more than
        :data:`SMALL` bytes, else :meth:`read`. A small run (the keys of an HDF5 block, say)
        is index-like: worth keeping in the cache, and a small part of it."""
        if self.direct and length > SMALL and not self.cached(offset, length):
            return self.read_uncached(offset, length)
        return self.read(offset, length)

    def read_extents(self, extents: Sequence[Extent], gap: int = GAP) -> list[memoryview]:
        """The bytes of each extent, in the order given, read as :func:`coalesce`'s runs
        (each with :meth:`read_run`)."""
        runs = coalesce(extents, gap)
        return split_runs(extents, runs, [self.read_run(offset, length) for offset, length in runs])

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
        """Close this process's descriptors and map."""
        self._map.close()
        self._fd.close()
        self._direct_fd.close()
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

"""A local file as a byte source: ``pread`` on a descriptor per process, ``O_DIRECT``
where the page cache cannot help, and what the page cache holds.

On a device that serves few operations per second (a hard disk, a throttled or network
volume), what a block read costs is its number of reads, not its bytes. Read through a
memory map, a block of a few MB is hundreds of page faults, and through libhdf5 one read per
chunk; each is an I/O of its own once the page cache is cold. The readers find the byte
extents a block occupies in its file and read them here: extents that lie close together
are joined into one run, and each run is one ``pread``.

A store larger than memory cannot stay in the page cache from one epoch to the next, and on
such a device even a large buffered read is several requests: the page cache's pages are
scattered in memory, and a request holds a limited number of pieces (on a virtio disk, 254
pages: at most 1 MB). :class:`LocalFile` with ``direct=True`` reads what is not cached with
``O_DIRECT`` into a buffer of huge pages instead: one request per 4 MB, and no page cache
filled with data that would be evicted before it is read again. What is cached is read from
the cache either way.

This is the :class:`~seqstore.io.ranges.Source` of a file on this machine.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import CorruptStoreError
from .per_process import ProcessLocal
from .ranges import GAP, Extent, Source, coalesce, split_runs

__all__ = ["SMALL", "LocalFile", "aligned_buffer", "direct_io_default", "file_identity"]
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
#: :class:`LocalFile`.
SMALL = 256 << 10


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


def file_identity(path: Path) -> str:
    """What tells the file at ``path`` from another later put there: its device, inode,
    size and modification time."""
    st = path.stat()
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


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


class LocalFile(Source):
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
        self.name = str(path)
        self.size = path.stat().st_size
        self.direct = direct_io_default(self.size) if direct is None else direct
        self._fd: ProcessLocal[int] = ProcessLocal(_close_fd)
        self._direct_fd: ProcessLocal[int] = ProcessLocal(_close_optional_fd)
        self._map: ProcessLocal[mmap.mmap] = ProcessLocal(mmap.mmap.close)
        self._scratch: ProcessLocal[bytearray] = ProcessLocal()

    @property
    def identity(self) -> str:
        # docstring inherited
        return file_identity(self.path)

    @property
    def local_path(self) -> Path:
        # docstring inherited
        return self.path

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

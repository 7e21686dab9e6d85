"""A store's file read by byte range, in a few large reads.

On a device that serves few operations per second (a hard disk, a throttled or network
volume), what a block read costs is its number of reads, not its bytes. Read through a
memory map, a block of a few MB is hundreds of page faults, and through libhdf5 one read per
chunk; each is an I/O of its own once the page cache is cold. The readers find the byte
extents a block occupies in its file and read them here: extents that lie close together
are joined into one run, and each run is one ``pread``.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import CorruptStoreError
from .handles import ProcessLocal

__all__ = ["GAP", "FileRanges", "coalesce"]

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
        data = [memoryview(self.read(offset, length)) for offset, length in runs]
        starts = [offset for offset, _ in runs]
        out = []
        for offset, length in extents:
            i = bisect.bisect_right(starts, offset) - 1  # the run that holds the extent
            out.append(data[i][offset - starts[i] : offset - starts[i] + length])
        return out

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

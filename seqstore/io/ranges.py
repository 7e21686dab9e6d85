"""What every byte source offers: a file's bytes read by range, and the arithmetic of ranges.

A format reader asks a :class:`Source` for the extents it needs and never knows whether they
come from a local disk (:class:`~seqstore.io.local.LocalFile`), a bucket
(:class:`~seqstore.io.object.ObjectFile`) or a cached copy
(:class:`~seqstore.io.cached.CachedFile`). :meth:`Source.read_extents` reads extents that
lie close together as one run (:func:`coalesce`): on a disk, reading the gap costs less than
a second seek; in object storage, less than a second request.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

__all__ = ["GAP", "Extent", "Source", "Window", "coalesce", "cut_joined", "split_runs"]

#: Extents less than this far apart are read as one run.
GAP = 1 << 20

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


class Source(ABC):
    """The bytes of one file, wherever they are, read by range.

    Attributes
    ----------
    name : str
        The file's path or URL, for messages.
    size : int
        Its length in bytes.
    far : bool
        Whether each read is a round trip to a server (object storage): a reader then
        fetches only what a block needs (an index chunk by chunk), in few requests.

    Notes
    -----
    A source is handed to worker processes: whatever it opens (a descriptor, a connection)
    it opens lazily in the process that reads.
    """

    far: ClassVar[bool] = False
    name: str
    size: int

    @property
    @abstractmethod
    def identity(self) -> str:
        """What tells this version of the file from any other at the same place."""

    @property
    def reading_from(self) -> str:
        """Where this process reads the bytes from now (a cached source: the URL until its
        copy is there, then the copy's path)."""
        return self.name

    @property
    def local_path(self) -> Path | None:
        """A file on this machine that holds these bytes, for a library that opens files by
        path (libhdf5, LMDB); None where there is none (yet)."""
        return None

    @abstractmethod
    def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        """``length`` bytes from ``offset``, in one read.

        Raises
        ------
        CorruptStoreError
            The file ends first.
        """

    def check(self) -> None:  # noqa: B027 - optional hook
        """Make sure, before a library is handed this source, that the file is still the
        one that was opened (a source that may have changed looks it up again).

        Raises
        ------
        CorruptStoreError
            The file was replaced.
        """

    def read_extents(self, extents: Sequence[Extent], gap: int = GAP) -> list[memoryview]:
        """The bytes of each ``(offset, length)`` extent, in the order given, read as
        :func:`coalesce`'s runs, one read each."""
        runs = coalesce(extents, gap)
        return split_runs(extents, runs, [self.read(offset, length) for offset, length in runs])

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what this process holds of the file; the next read opens it again."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.name}')"


class Window(Source):
    """``size`` bytes of ``source`` from ``start`` on, as a file of their own (a file that
    another format embeds, such as the Arrow file at the end of a litdata chunk)."""

    def __init__(self, source: Source, start: int, size: int) -> None:
        self.source, self.start, self.size = source, start, size
        self.name = source.name
        self.far = source.far  # type: ignore[misc]

    @property
    def identity(self) -> str:
        # docstring inherited
        return f"{self.source.identity}@{self.start}+{self.size}"

    def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        # docstring inherited
        length = max(0, min(length, self.size - offset))
        return self.source.read(self.start + offset, length)

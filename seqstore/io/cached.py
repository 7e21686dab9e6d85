"""A source that keeps a whole local copy of another: a remote file read at local speed.

:class:`CachedFile` wraps an :class:`~seqstore.io.object.ObjectFile`. The first process to
read it starts a download of the whole object into the cache (a
:class:`~seqstore.io.cache.ShardCache`, bounded and shared by processes) in the background,
and reads remotely meanwhile; every process switches to the local copy
(:class:`~seqstore.io.local.LocalFile`) once it is there. The copy is named by the object's
URL and version, so an object replaced on the server is never read from an old copy. Where
the object does not fit in the cache, every read stays remote.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from .cache import ShardCache, cache_key
from .local import LocalFile
from .object import ObjectFile
from .per_process import ProcessLocal
from .ranges import GAP, Extent, Source

__all__ = ["CachedFile"]

_CHECK_S = 0.5  # how often a process looks for the copy while it reads remotely
_TOUCH_S = 30.0  # how often a process marks the copy it reads as recently used


class _Reading:
    """What one process reads from: the remote file until the copy is there."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.checked = 0.0
        self.touched = 0.0


def _close_reading(reading: _Reading) -> None:
    reading.source.close()


class CachedFile(Source):
    """A remote file read from a whole local copy once the cache holds one.

    Parameters
    ----------
    remote
        The file.
    cache
        Where the copy is kept.
    """

    def __init__(self, remote: ObjectFile, cache: ShardCache) -> None:
        self.remote = remote
        self.cache = cache
        self.name = remote.name
        self.size = remote.size
        self.key = cache_key(remote.name, remote.version)
        self._file_name = remote.name.rstrip("/").rsplit("/", 1)[-1] or "data"
        self._reading: ProcessLocal[_Reading] = ProcessLocal(_close_reading)

    @property
    def far(self) -> bool:  # type: ignore[override]
        """Whether reads go to the server: until this process has the copy."""
        return self._now().source.far

    @property
    def identity(self) -> str:
        # docstring inherited
        return self.remote.identity

    @property
    def local_path(self) -> Path | None:
        # docstring inherited
        return self._now().source.local_path

    @property
    def reading_from(self) -> str:
        # docstring inherited
        return self._now().source.name

    def _open(self) -> _Reading:
        copy = self._copy()
        return _Reading(copy if copy is not None else self.remote)

    def _now(self) -> _Reading:
        reading = self._reading.get(self._open)
        now = time.monotonic()
        if reading.source is self.remote:
            if now - reading.checked >= _CHECK_S:
                reading.checked = reading.touched = now
                copy = self._copy()
                if copy is None:  # (again, if this process's last try failed long enough ago)
                    self.cache.fill_in_background(
                        self.key, self.size, self._download, what=self.name
                    )
                else:
                    reading.source = copy
        elif now - reading.touched > _TOUCH_S:
            reading.touched = now
            self.cache.touch(self.key)
        return reading

    def _copy(self) -> LocalFile | None:
        """The whole copy in the cache, opened, if it is there."""
        entry = self.cache.get(self.key)
        if entry is None:
            return None
        try:
            local = LocalFile(entry / self._file_name)
            os.fstat(local.fd)  # opened now: a copy evicted from here on stays readable
        except FileNotFoundError:  # evicted meanwhile
            return None
        if local.size != self.size:
            local.close()
            self.cache.remove(self.key)
            return None
        return local

    def _download(self, directory: Path) -> None:
        self.remote.download(directory / self._file_name)

    def check(self) -> None:
        # docstring inherited
        self._now().source.check()

    def read(self, offset: int, length: int) -> bytes | bytearray | memoryview:
        # docstring inherited
        return self._now().source.read(offset, length)

    def read_extents(self, extents: Sequence[Extent], gap: int = GAP) -> list[memoryview]:
        # docstring inherited
        return self._now().source.read_extents(extents, gap)

    def close(self) -> None:
        # docstring inherited
        self._reading.close()

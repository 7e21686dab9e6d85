"""A local cache of remote shards: whole files, bounded in size, shared by processes.

An entry is a directory holding the files of one shard (an HDF5 store's ``data.h5``; an
LMDB store's ``data.mdb`` with its manifest), named by the URL and the version of what it
copies, so that an object replaced on the server is never read from an old copy. Layout::

    CACHE_DIR/entries/<key>/      finished entries, nothing else
    CACHE_DIR/tmp/<key>.<pid>.<n> entries being downloaded, and entries being removed
    CACHE_DIR/locks/<key>.lock    who is downloading <key>
    CACHE_DIR/cache.lock          held while entries are counted and evicted

Several processes (a loader's workers, several loaders) share one cache safely:

- an entry is downloaded into ``tmp/`` and renamed into ``entries/`` only once whole, so a
  reader sees a whole entry or none (never half a file);
- one process downloads a given entry at a time (a POSIX lock on its lock file, which a
  process's death releases and a fork does not pass on); others wait for it or read
  remotely meanwhile;
- removal is a rename out of ``entries/`` first: a process that has a file of the entry
  open keeps reading it (POSIX keeps an unlinked file until it is closed).

The cache holds at most ``limit_bytes``: before an entry is added, the least recently used
entries (by the modification time of their directory, which each use touches) are removed
until it fits. An entry larger than the whole limit is not cached.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import os
import shutil
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .per_process import pid_alive

__all__ = ["ShardCache", "cache_key"]

_counter = itertools.count()
RETRY_S = 60.0  # how long after a failed background download this process tries it again
# A lock per entry for the threads of this process: the file lock of an entry does not
# exclude them (POSIX locks belong to processes), and a second thread filling the same
# entry would clear the first one's download as its own process's leftover.
_fill_locks: dict[tuple[str, str], threading.Lock] = {}
_fill_locks_lock = threading.Lock()


def _fill_lock(directory: Path, key: str) -> threading.Lock:
    with _fill_locks_lock:
        return _fill_locks.setdefault((str(directory), key), threading.Lock())


def _forget_fill_locks() -> None:
    # In a forked child: a lock held by a parent's thread would stay held for ever.
    global _fill_locks_lock
    _fill_locks.clear()
    _fill_locks_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_fill_locks)


def cache_key(url: str, version: str) -> str:
    """The entry name of the object ``url`` at ``version``: readable and unique."""
    digest = hashlib.sha256(f"{url}\0{version}".encode()).hexdigest()[:20]
    tail = "-".join(url.rstrip("/").split("/")[-2:])
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in tail)[-60:]
    return f"{digest}-{safe}"


@contextmanager
def _locked(path: Path, *, block: bool) -> Iterator[bool]:
    """Hold a POSIX lock on ``path``; yields False (and holds nothing) when ``block`` is
    False and another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if block else fcntl.LOCK_NB))
        except OSError:
            if block:
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class ShardCache:
    """A bounded cache of whole shards in a local directory (see the module docstring).

    Parameters
    ----------
    directory
        Where the cache lives; made if missing. Several caches may not share one.
    limit_bytes
        The most bytes the cache holds; None for no limit.
    """

    def __init__(self, directory: str | os.PathLike[str], limit_bytes: int | None) -> None:
        self.directory = Path(directory).expanduser()
        self.limit_bytes = limit_bytes
        for sub in ("entries", "tmp", "locks"):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._tried: dict[str, float] = {}  # key -> this process's last try in the background

    def __repr__(self) -> str:
        return f"ShardCache('{self.directory}', limit_bytes={self.limit_bytes})"

    def path(self, key: str) -> Path:
        """Where the entry ``key`` is once finished."""
        return self.directory / "entries" / key

    def get(self, key: str) -> Path | None:
        """The finished entry ``key``, marked as just used; None if it is not cached."""
        path = self.path(key)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def touch(self, key: str) -> None:
        """Mark the entry ``key`` as just used (if it is cached)."""
        self.get(key)

    def entries(self) -> list[Path]:
        """Finished entries, least recently used first."""
        found = []
        for p in (self.directory / "entries").iterdir():
            try:
                found.append((p.stat().st_mtime_ns, p))
            except FileNotFoundError:  # removed meanwhile
                continue
        return [p for _, p in sorted(found)]

    def fits(self, size: int) -> bool:
        """Whether an entry of ``size`` bytes can be cached at all."""
        return self.limit_bytes is None or size <= self.limit_bytes

    def fill(
        self, key: str, size: int, populate: Callable[[Path], None], *, block: bool = True
    ) -> Path | None:
        """Make the entry ``key`` unless it is cached already, and return it.

        Parameters
        ----------
        key
            The entry.
        size
            Its bytes, to make room before the download.
        populate
            Writes the entry's files into the directory it is given (a download).
        block
            Wait while another process, or another thread of this one, makes the same
            entry. Without it, return None at once in that case.

        Returns
        -------
        Path or None
            The entry; None when it does not fit in the limit, or (``block`` False) when
            another process or thread is making it.
        """
        found = self.get(key)
        if found is not None:
            return found
        if not self.fits(size):
            return None
        lock = _fill_lock(self.directory, key)
        if not lock.acquire(blocking=block):  # another thread of this process is making it
            return None
        try:
            with _locked(self.directory / "locks" / f"{key}.lock", block=block) as held:
                if not held:
                    return None
                found = self.get(key)  # made by the process we waited for
                if found is not None:
                    return found
                self._clear_dead_tmp(key)
                self.make_room(size, keep=key)
                tmp = self.directory / "tmp" / f"{key}.{os.getpid()}.{next(_counter)}"
                tmp.mkdir()
                try:
                    populate(tmp)
                    for root, _dirs, files in os.walk(tmp):
                        for name in files:
                            with open(os.path.join(root, name), "rb") as f:
                                os.fsync(f.fileno())
                    os.rename(tmp, self.path(key))
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            self.make_room(0, keep=key)  # another entry may have come in meanwhile
            return self.get(key)
        finally:
            lock.release()

    def fill_in_background(
        self, key: str, size: int, populate: Callable[[Path], None], what: str
    ) -> bool:
        """Start making the entry ``key`` in a thread of this process, unless it is cached,
        too large, being made by another process or thread, or this process tried it less
        than ``RETRY_S`` seconds ago.

        A failed download is a warning naming ``what`` (the object it copies), not an error:
        the caller goes on reading remotely and calls again later, which retries it.

        Returns
        -------
        bool
            Whether a try started.
        """
        if self.get(key) is not None or not self.fits(size):
            return False
        last = self._tried.get(key)
        if last is not None and time.monotonic() - last < RETRY_S:
            return False
        self._tried[key] = time.monotonic()

        def run() -> None:
            try:
                self.fill(key, size, populate, block=False)
            except Exception as exc:
                warnings.warn(
                    f"could not copy '{what}' into the cache {self.directory} ({exc}); "
                    f"reading it remotely, trying again in {RETRY_S:.0f} s",
                    RuntimeWarning,
                    stacklevel=1,
                )

        thread = threading.Thread(target=run, name=f"seqstore-cache-{key[:12]}", daemon=True)
        thread.start()
        return True

    def make_room(self, size: int, *, keep: str | None = None) -> None:
        """Remove least recently used entries until ``size`` more bytes fit in the limit;
        the entry ``keep`` stays."""
        if self.limit_bytes is None:
            return
        with _locked(self.directory / "cache.lock", block=True):
            entries = [p for p in self.entries() if p.name != keep]
            sizes = {p: _size(p) for p in entries}
            total = sum(sizes.values()) + size
            kept = self.path(keep) if keep is not None else None
            if kept is not None and kept.exists():
                total += _size(kept)
            for victim in entries:
                if total <= self.limit_bytes:
                    break
                self.remove(victim.name)
                total -= sizes[victim]

    def remove(self, key: str) -> None:
        """Take the entry ``key`` out of the cache (readers that have its files open keep
        them)."""
        gone = self.directory / "tmp" / f"{key}.removed.{os.getpid()}.{next(_counter)}"
        try:
            os.rename(self.path(key), gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def _clear_dead_tmp(self, key: str) -> None:
        """Remove what downloads of ``key`` by processes that died left in ``tmp/``."""
        for p in (self.directory / "tmp").glob(f"{key}.*"):
            parts = p.name[len(key) + 1 :].split(".")
            pid = int(parts[0]) if parts[0].isdigit() else -1
            if parts[0] == "removed" or not pid_alive(pid) or pid == os.getpid():
                shutil.rmtree(p, ignore_errors=True)

    def total_bytes(self) -> int:
        """Bytes held by finished entries."""
        return sum(_size(p) for p in self.entries())

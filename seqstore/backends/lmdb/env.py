"""LMDB environments shared per process, and the reader that holds one (LMDB stores and
tensorpack files both read through it).

py-lmdb allows one open environment per path and process, so read-only environments are
shared by the readers of a path in a process, counted, and closed with the last of them.
An entry is tied to the identity of the data file (device, inode, size, mtime): a store
replaced at the same path is a new file, and never read through the old one's environment.
A forked child inherits the parent's entries; it closes them before opening its own:
without a lock table (lock=False) that only unmaps the child's copy. The count is kept under
a lock: readers acquire from their read-ahead threads while a dropped reader's finalizer
may release in another thread, and an update lost between them would close an environment
still in use.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lmdb

from ...errors import CorruptStoreError, NotAStoreError
from ...io.per_process import ProcessLocal
from ...io.places import Place
from ..reader import Reader
from .pages import HEAD_BYTES, read_meta

__all__ = [
    "SharedEnvReader",
    "acquire_env",
    "check_lmdb_file",
    "env_is_current",
    "release_env",
]


@dataclass
class _Env:
    pid: int
    file_id: tuple[int, ...]
    env: lmdb.Environment
    users: int


_envs: dict[str, _Env] = {}
_envs_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # A thread of the parent may have held the lock as it forked: the child's copy would
    # stay held for ever.
    global _envs_lock
    _envs_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _data_file(path: Path, subdir: bool) -> Path:
    return path / "data.mdb" if subdir else path


def check_lmdb_file(file: Path) -> None:
    """Refuse an LMDB file shorter than its own meta pages say (it would crash on SIGBUS).

    Raises
    ------
    CorruptStoreError
        The file is truncated, or its meta pages are not LMDB's.
    """
    try:
        with open(file, "rb") as f:
            head = f.read(HEAD_BYTES)
    except OSError as exc:
        raise NotAStoreError(f"cannot read LMDB file '{file}': {exc.strerror}") from None
    read_meta(head, file.stat().st_size, str(file), "re-create the store with seqstore convert")


def acquire_env(path: Path, *, subdir: bool, **options: Any) -> tuple[lmdb.Environment, Any]:
    """This process's read-only environment of the LMDB data at ``path``, and a token for
    :func:`release_env`. The file is checked (:func:`check_lmdb_file`) before it is mapped."""
    file = _data_file(path, subdir)
    key = str(path.resolve())
    st = file.stat()
    file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _envs_lock:
        return _acquire(key, file, file_id, subdir, options)


def _acquire(
    key: str, file: Path, file_id: tuple[int, ...], subdir: bool, options: dict[str, Any]
) -> tuple[lmdb.Environment, Any]:
    pid = os.getpid()
    entry = _envs.get(key)
    if entry is not None and entry.pid == pid and entry.file_id == file_id:
        entry.users += 1
        return entry.env, (key, file_id, pid)
    if entry is not None:  # inherited over fork, or the file was replaced since
        entry.env.close()
        del _envs[key]
    check_lmdb_file(file)
    env = lmdb.open(key, readonly=True, lock=False, meminit=False, subdir=subdir, **options)
    _envs[key] = _Env(pid, file_id, env, 1)
    return env, (key, file_id, pid)


def release_env(token: Any) -> None:
    """Give back an environment from :func:`acquire_env`; the last user closes it."""
    key, file_id, pid = token
    with _envs_lock:
        entry = _envs.get(key)
        if entry is not None and entry.pid == pid == os.getpid() and entry.file_id == file_id:
            entry.users -= 1
            if entry.users <= 0:
                entry.env.close()
                del _envs[key]


def env_is_current(env: lmdb.Environment, token: Any) -> bool:
    """Whether ``env`` is still this process's environment of its path (not closed because
    the store was replaced and a newer reader opened the new one)."""
    entry = _envs.get(token[0])
    return entry is not None and entry.env is env


def _release_lease(lease: tuple[lmdb.Environment, Any]) -> None:
    release_env(lease[1])


class SharedEnvReader(Reader):
    """A reader of an LMDB environment shared, counted, by the readers of its file in a
    process (see :func:`acquire_env`); acquired in each process on first use.

    Subclasses set :attr:`subdir` and may override :meth:`_env_options`.
    """

    subdir: ClassVar[bool] = True

    def __init__(self, location: str | os.PathLike[str] | Place) -> None:
        super().__init__(location)
        self._lease: ProcessLocal[tuple[lmdb.Environment, Any]] = ProcessLocal(_release_lease)

    def _env_options(self) -> dict[str, Any]:
        return {}

    def _acquire(self) -> tuple[lmdb.Environment, Any]:
        try:
            return acquire_env(self.path, subdir=self.subdir, **self._env_options())
        except lmdb.Error as exc:
            raise NotAStoreError(f"'{self.path}' is not a readable LMDB store ({exc})") from None

    @property
    def env(self) -> lmdb.Environment:
        """This process's environment of the store.

        Raises
        ------
        CorruptStoreError
            The store was replaced after this reader opened it.
        """
        env, token = self._lease.get(self._acquire)
        if not env_is_current(env, token):
            raise CorruptStoreError(
                f"store '{self.path}' was replaced after this reader opened it; open it again"
            )
        return env

    def close(self) -> None:
        # docstring inherited
        self._lease.close()

    def _damaged(self, exc: Exception) -> CorruptStoreError:
        return CorruptStoreError(
            f"LMDB store '{self.path}' is damaged ({exc}); re-create it with seqstore convert"
        )

"""Per-process handles: an LMDB environment, an h5py file, an index loaded from one.

A reader made in the parent process is handed to forked or spawned DataLoader workers, so
whatever it opens must be opened again in each process that uses it. :class:`ProcessLocal`
is that one mechanism: it opens its value lazily, reopens it in a new process, and leaves
the value out when it is pickled.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["ProcessLocal", "pid_alive"]

H = TypeVar("H")


def _close_in(pid: int, close: Callable[[Any], None], value: Any) -> None:
    if os.getpid() == pid:
        close(value)


class ProcessLocal(Generic[H]):
    """A value opened on first use in each process, and closed in the process that opened it.

    Parameters
    ----------
    close
        Releases a value; it runs on :meth:`close` or when this object is garbage-collected,
        and only in the process that opened the value. None when nothing needs releasing.

    Notes
    -----
    A value inherited over fork is kept alive, unused, never closed by the child: closing a
    parent's HDF5 file from a child can disturb the parent.
    """

    def __init__(self, close: Callable[[H], None] | None = None) -> None:
        self._close = close
        self._value: H | None = None
        self._pid = -1
        self._release: weakref.finalize | None = None

    def get(self, open: Callable[[], H]) -> H:
        """This process's value, made by ``open`` on first use in the process.

        ``open`` is passed on each call rather than kept, so that the value's owner (a
        reader) is not referenced from here: it is freed, and its value closed, as soon as
        it is dropped.
        """
        if self._value is not None and self._pid == os.getpid():
            return self._value
        # A value inherited over fork stays referenced by its finalizer, which does nothing
        # in this process: it is never closed here.
        self._value = None
        value = open()
        self._value, self._pid = value, os.getpid()
        if self._close is not None:
            self._release = weakref.finalize(self, _close_in, self._pid, self._close, value)
        return value

    def peek(self) -> H | None:
        """This process's value if it is open, else None (opening nothing)."""
        if self._value is not None and self._pid == os.getpid():
            return self._value
        return None

    def close(self) -> None:
        """Close this process's value; the next :meth:`get` opens it again."""
        if self._release is not None and self._pid == os.getpid():
            self._release()
        self._value, self._pid, self._release = None, -1, None

    def __getstate__(self) -> dict[str, Any]:
        # A spawned process opens its own value, never gets one.
        state = self.__dict__.copy()
        state.update(_value=None, _pid=-1, _release=None)
        return state


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running (this one included)."""
    if pid <= 0:  # a name not made by this module; kill(0 or -1) would test whole groups
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True

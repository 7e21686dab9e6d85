"""How the main process hears of its workers' failures: the bad records that batches
bring (:class:`BadRecordLog`, counted and warned about) and workers that died
(:func:`guard_sigchld`, :func:`dead_worker`)."""

from __future__ import annotations

import multiprocessing.connection
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import BadRecordError, BadRecordWarning

__all__ = ["BadRecord", "BadRecordLog", "bad_message", "dead_worker", "guard_sigchld"]

# A bad record as it travels with its batch: key, store index, decoder message or None.
BadRecord = tuple[str, int, str | None]


def bad_message(key: str, index: int, store: str | Path, decode_error: str | None) -> str:
    """What is wrong with record ``key`` (#``index``) of ``store``, and what to do."""
    where = f"record '{key}' (#{index}) of store '{store}'"
    if decode_error is None:
        return (
            f"{where} fails its checksum: the store is damaged; run `seqstore info --verify "
            f"{store}` and rewrite the store, or pass on_error='skip' to load around it"
        )
    return (
        f"{where} cannot be decoded ({decode_error}); rewrite the store from a good copy of "
        "the image, or pass on_error='skip' to load around it"
    )


def dead_worker(batches: Iterator[Any], wait: float = 2.0) -> str | None:
    """How a worker of the DataLoader iterator ``batches`` ended, if one has.

    A queue can break as a worker is killed, a moment before the process can be reaped:
    wait up to ``wait`` seconds for one to end before answering that none has.
    """
    workers = list(getattr(batches, "_workers", ()))
    if not workers:
        return None
    # The sentinel tells that a process ended even where its exit status cannot be had
    # (torch's own SIGCHLD handling may have reaped it first).
    ended = multiprocessing.connection.wait([w.sentinel for w in workers], timeout=wait)
    for worker in workers:
        if worker.sentinel in ended:
            code = worker.exitcode
            if code is None:
                how = "ended"
            elif code < 0:
                how = f"killed by {signal.Signals(-code).name}"
            else:
                how = f"exit status {code}"
            return f"worker pid {worker.pid}: {how}"
    return None


class BadRecordLog:
    """The bad records a loader has met: counted per epoch, each warned about once.

    Parameters
    ----------
    store
        The store, for messages.
    max_bad
        Most bad records an epoch may hold, or None for no limit.
    setting
        ``max_bad`` as the user set it (a count or a fraction), for messages.
    rank
        The loader's rank, for messages.

    Attributes
    ----------
    keys : list of str
        Keys of the bad records met so far, each once, in order.
    in_epoch : int
        Bad records met in the current epoch (saved with a loader's state).
    """

    def __init__(self, store: str | Path, max_bad: int | None, setting: float | None, rank: int):
        self.store = store
        self.max_bad = max_bad
        self.setting = setting
        self.rank = rank
        self.keys: list[str] = []
        self.in_epoch = 0
        self._warned: set[str] = set()

    def note(self, bad: list[BadRecord], epoch: int) -> None:
        """Count, keep and warn about a batch's bad records.

        Raises
        ------
        BadRecordError
            The epoch has now met more than ``max_bad``.
        """
        if not bad:
            return
        store = self.store
        if self.max_bad is not None and self.in_epoch + len(bad) > self.max_bad:
            key, index, decode_error = bad[-1]
            raise BadRecordError(
                f"more than max_bad={self.setting} bad records in epoch {epoch} "
                f"of store '{store}' on rank {self.rank}; the last: "
                + bad_message(key, index, store, decode_error)
            )
        self.in_epoch += len(bad)
        for key, index, decode_error in bad:
            if key in self._warned:
                continue
            self._warned.add(key)
            self.keys.append(key)
            what = "fails its checksum" if decode_error is None else "cannot be decoded"
            # Points at the training loop: note <- Loader._iter_epoch <- Loader.__iter__.
            warnings.warn(
                f"skipped record '{key}' (#{index}) of store '{store}': it {what}",
                BadRecordWarning,
                stacklevel=4,
            )


def guard_sigchld(on_death: Callable[[str], None], workers: int) -> Callable[[], None]:
    """Make a dead worker a call of ``on_death`` (its one-line message), not an exception.

    DataLoader's SIGCHLD handler raises its RuntimeError wherever the main thread is,
    often inside the training step, where no loader code can turn it into one clear
    error. While an epoch runs, this wraps that handler to keep the message instead.
    Returns what restores the handler (a no-op where there is nothing to wrap, as with
    no ``workers``).
    """
    previous = signal.getsignal(signal.SIGCHLD) if hasattr(signal, "SIGCHLD") else None
    if (
        workers == 0
        or not callable(previous)
        or threading.current_thread() is not threading.main_thread()
    ):
        return lambda: None

    def on_sigchld(signum: int, frame: Any) -> None:
        try:
            previous(signum, frame)
        except RuntimeError as err:
            # torch adds hints on further lines to some of these: keep one line.
            on_death(" ".join(str(err).split()))

    signal.signal(signal.SIGCHLD, on_sigchld)

    def unguard() -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGCHLD, previous)

    return unguard

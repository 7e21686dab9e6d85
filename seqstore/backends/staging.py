"""Where a store is written before it appears at its path, and how an interrupted write ends.

A writer never writes into the destination itself. It builds the store in a hidden sibling,
``.<name>.seqstore-new-<pid>-<id>``, and only a finished store (data on disk, manifest
written) is moved to ``<name>``. If a store is already there (``overwrite``), the move is two
renames: the old store to ``.<name>.seqstore-old-<pid>-<id>``, then the new one into place,
then the old one is deleted. So a process killed at any instant leaves at ``<name>`` the old
store, the new one, or, between the two renames, nothing but the two siblings, which
:func:`recover` turns back into the new store (it was complete) the next time anything opens
or writes ``<name>``.

A staging directory whose writer died stays behind: it is what ``convert --resume``
continues from. Readers of ``<name>`` refuse it with a line that says so.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import psutil

from ..errors import NotAStoreError, PartialStoreError, SeqstoreWarning
from ..io.per_process import pid_alive
from ..manifest import MANIFEST_NAME, PARTIAL_NAME, Manifest, fsync_dir, read_manifest

__all__ = [
    "dead_staging",
    "live_staging",
    "new_staging_dir",
    "process_started",
    "read_store_manifest",
    "recover",
    "swap_into_place",
]

_NEW = ".seqstore-new-"
_OLD = ".seqstore-old-"


def _siblings(dst: Path, infix: str) -> list[Path]:
    prefix = f".{dst.name}{infix}"
    try:
        return sorted(p for p in dst.parent.iterdir() if p.name.startswith(prefix))
    except OSError:  # no parent directory yet
        return []


def _token(p: Path, infix: str) -> str:
    return p.name.rsplit(infix, 1)[1]


def _pid(p: Path, infix: str) -> int:
    try:
        return int(_token(p, infix).split("-", 1)[0])
    except ValueError:
        return -1


def new_staging_dir(dst: Path) -> Path:
    """A fresh, empty staging directory for a new store at ``dst``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    path = dst.parent / f".{dst.name}{_NEW}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def live_staging(dst: Path) -> list[Path]:
    """Staging directories of ``dst`` whose writer is still running."""
    return [p for p in _siblings(dst, _NEW) if _writer_alive(p)]


def dead_staging(dst: Path) -> list[Path]:
    """Staging directories of ``dst`` left by writers that died: resumable, or litter."""
    return [p for p in _siblings(dst, _NEW) if not _writer_alive(p)]


def _writer_alive(staging: Path) -> bool:
    """Whether the writer of ``staging`` runs: its pid is a process's, and that process is
    not a later one that got the pid of a writer that died (pids are reused, within seconds
    where pid_max is 32768 and processes come and go, as in a test run)."""
    pid = _pid(staging, _NEW)
    if not pid_alive(pid):
        return False
    if pid == os.getpid():
        return True
    try:
        with open(staging / PARTIAL_NAME, encoding="utf-8") as f:
            marker = json.load(f)
        if int(marker["pid"]) != pid:
            return True  # just adopted by a resuming writer, whose marker is not written yet
        began = float(marker["pid_started"])
        return bool(abs(psutil.Process(pid).create_time() - began) < 0.5)
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return True  # nothing to tell it by (a marker not yet written): as alive as its pid


def process_started() -> float:
    """When this process started (seconds since the epoch), which a staging directory's
    marker records beside its pid: the pid and this tell the writer from a later process
    that got the same pid."""
    return float(psutil.Process().create_time())


def recover(dst: Path) -> list[str]:
    """Finish a replacement of ``dst`` that a killed writer left between its two renames.

    Returns
    -------
    list of str
        What was done, one line each (also issued as :class:`SeqstoreWarning`).
    """
    done: list[str] = []
    for old in _siblings(dst, _OLD):
        if pid_alive(_pid(old, _OLD)):
            continue  # a live writer is between its renames right now
        new = dst.parent / f".{dst.name}{_NEW}{_token(old, _OLD)}"
        if dst.exists():
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed '{old}', the store that an interrupted replace of '{dst}' left")
        elif new.is_dir() and (new / MANIFEST_NAME).is_file():
            new.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"finished replacing '{dst}': its writer was killed after it had finished")
        else:
            old.rename(dst)
            done.append(
                f"put back the store at '{dst}' that an interrupted replace had moved aside"
            )
    for line in done:
        warnings.warn(line, SeqstoreWarning, stacklevel=2)
    return done


def swap_into_place(staging: Path, dst: Path, *, overwrite: bool) -> None:
    """Move the finished store in ``staging`` to ``dst``, replacing what is there if allowed.

    Raises
    ------
    FileExistsError
        ``dst`` holds something and ``overwrite`` is false (another writer finished first).
    """
    if dst.is_dir() and not any(dst.iterdir()):
        dst.rmdir()
    if dst.exists() or dst.is_symlink():
        if not overwrite:
            raise FileExistsError(dst)
        old = dst.parent / f".{dst.name}{_OLD}{_token(staging, _NEW)}"
        dst.rename(old)
        staging.rename(dst)
        fsync_dir(dst.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        staging.rename(dst)
        fsync_dir(dst.parent)


def read_store_manifest(dst: Path) -> Manifest:
    """The manifest of the store at ``dst``, for a reader.

    A replacement that a killed writer left half done is finished first; where there is no
    store yet, a write still running or killed is named instead of "does not exist"; the
    leftovers of a killed write beside a whole store are announced, once.

    Raises
    ------
    PartialStoreError
        ``dst`` is still being written, or its writer was killed.
    """
    recover(dst)
    if not (dst / MANIFEST_NAME).is_file() and not (dst / PARTIAL_NAME).is_file():
        live, dead = live_staging(dst), dead_staging(dst)
        if live:
            raise PartialStoreError(
                f"store '{dst}' is incomplete: it is still being written (writer pid "
                f"{_pid(live[0], _NEW)}); wait for that convert to finish"
            )
        if dead:
            raise PartialStoreError(
                f"store '{dst}' is incomplete: its writer (pid {_pid(dead[0], _NEW)}) was "
                "killed before it finished; run the same convert again with --resume to "
                "continue it, or without --resume to start over"
            )
        if not dst.exists():
            raise NotAStoreError(f"'{dst}' does not exist")
    manifest = read_manifest(dst)
    for leftover in dead_staging(dst):
        if leftover not in _announced:
            _announced.add(leftover)
            warnings.warn(
                f"a convert to '{dst}' was killed and left its unfinished output at "
                f"'{leftover}'; convert --resume continues it, a convert without --resume "
                "removes it",
                SeqstoreWarning,
                stacklevel=2,
            )
    return manifest


# Leftovers already announced in this process: one note per leftover, not one per open.
_announced: set[Path] = set()

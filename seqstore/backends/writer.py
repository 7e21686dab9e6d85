"""The writing room: :class:`Writer`, the single-pass, append-only builder of one store.

A writer builds its store in a hidden staging directory (:mod:`.staging`), records its
format, sizes and index digest in the manifest, and moves the store into place only once
:meth:`Writer.finish` has made it whole. A killed write can resume from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from .._version import __version__
from ..errors import (
    ConfigError,
    CorruptStoreError,
    DiskFullError,
    SeqstoreError,
    SeqstoreWarning,
    StoreExistsError,
)
from ..manifest import (
    PARTIAL_NAME,
    PROGRESS_NAME,
    Manifest,
    Provenance,
    Shard,
    is_store,
    write_json_atomic,
    write_manifest,
)
from ..records import Record
from . import staging

__all__ = ["ShardFilesWriter", "Writer", "ensure_space"]

_SPACE_MARGIN = 16 << 20


class Writer(ABC):
    """Single-pass, append-only writer of one store.

    Use it as a context manager: the store is finished when the block exits normally and
    aborted when it raises. The store is built in a hidden staging directory beside ``path``
    (see :mod:`~seqstore.backends.staging`) and moved to ``path`` only once finished, so
    ``path`` holds the old store or the new one, never a part of either, even if the process
    is killed.

    Parameters
    ----------
    path
        Directory the store will be at. It must not exist, be empty, or (with ``overwrite``)
        hold a seqstore store, which is replaced when the new one is finished.
    classes
        Class names that labels index; empty when the names are unknown.
    overwrite
        Replace an existing store at ``path``.
    provenance
        How the store is being written, recorded in the manifest.
    resume
        Continue the staging directory of a writer of the same store (same source, format
        and options) that was killed, from its last :meth:`checkpoint`; start afresh if there
        is none. :attr:`resumed` then holds what that checkpoint recorded.

    Attributes
    ----------
    directory : Path
        Where the format's files are written: the staging directory.
    resumed : dict or None
        The ``extra`` of the checkpoint this writer continues from (None when it started
        afresh); ``num_records`` and ``total_bytes`` already count what it holds.
    """

    format: ClassVar[str]
    format_version: ClassVar[int] = 1
    #: Names of the files whose sizes the manifest records (readers check them before use).
    data_files: ClassVar[tuple[str, ...]] = ()
    #: Whether :meth:`checkpoint` and ``resume`` work (the format implements ``_sync`` and
    #: ``_reopen``).
    resumable: ClassVar[bool] = False
    #: Whether the format's own files are shards of a size (WebDataset's tar files): then
    #: ``convert --shard-mb`` is the writer's ``shard_bytes``, not a sharded store.
    writes_shards: ClassVar[bool] = False

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        classes: Sequence[str] = (),
        overwrite: bool = False,
        provenance: Provenance | None = None,
        resume: bool = False,
    ) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self.provenance = provenance or Provenance(seqstore_version=__version__)
        self.overwrite = overwrite
        self.num_records = 0
        self.total_bytes = 0
        self.resumed: dict[str, Any] | None = None
        self._state = "new"
        if resume and not self.resumable:
            raise ConfigError(f"the '{self.format}' writer cannot resume; convert without --resume")
        _check_destination(self.path, overwrite)
        marker = {
            "format": self.format,
            "format_version": self.format_version,
            "classes": self.classes,
            "source": self.provenance.source,
            "options": self.provenance.options,
        }
        adopted = _adopt_staging(self.path, marker) if resume else None
        for litter in staging.dead_staging(self.path):
            shutil.rmtree(litter, ignore_errors=True)
            warnings.warn(
                f"removed '{litter}', the unfinished output of a convert to '{self.path}' that "
                "was killed (--resume continues such a convert instead)",
                SeqstoreWarning,
                stacklevel=3,
            )
        self.directory = adopted or staging.new_staging_dir(self.path)
        write_json_atomic(
            self.directory / PARTIAL_NAME,
            {
                **marker,
                "pid": os.getpid(),
                "pid_started": staging.process_started(),
                "started": self.provenance.created,
            },
        )
        self._state = "open"
        try:
            progress = _read_progress(self.directory) if adopted else None
            if progress is not None:
                try:
                    self.num_records = int(progress["records"])
                    self.total_bytes = int(progress["total_bytes"])
                    self._reopen()
                    self.resumed = progress.get("extra", {})
                except CorruptStoreError as exc:
                    warnings.warn(
                        f"cannot continue the killed convert to '{self.path}': {exc}; "
                        "starting over",
                        SeqstoreWarning,
                        stacklevel=3,
                    )
                    self._abort()
                    progress = None
                    self.num_records = self.total_bytes = 0
            if progress is None:
                for leftover in self.directory.iterdir():  # an adopted dir, not continued
                    if leftover.name != PARTIAL_NAME:
                        _remove(leftover)
                self._open()
        except BaseException:
            self.abort()
            raise

    # -- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Create the format's files inside ``self.directory``."""

    @abstractmethod
    def _write(self, record: Record) -> None:
        """Append one record."""

    @abstractmethod
    def _finish(self) -> None:
        """Flush and close the format's files; after this they are whole on disk."""

    def _abort(self) -> None:  # noqa: B027 - optional hook
        """Release the format's files after an error; the directory is removed afterwards."""

    def _sync(self) -> None:  # noqa: B027 - only for resumable formats
        """Make every record written so far durable on disk (for :meth:`checkpoint`)."""

    def _reopen(self) -> None:  # noqa: B027 - only for resumable formats
        """Open the files of a checkpointed write and cut them to ``self.num_records``."""

    def _index_digest(self) -> str | None:
        """SHA-256 of the format's per-record index, once :meth:`_finish` has run."""
        return None

    def _shards(self) -> list[Shard] | None:
        """The shards of a sharded store, once :meth:`_finish` has run; None otherwise."""
        return None

    # -- public ------------------------------------------------------------------------------
    def write(self, record: Record) -> None:
        """Append ``record`` to the store."""
        if self._state != "open":
            raise RuntimeError(f"writer for '{self.path}' is {self._state}; cannot write")
        if self.classes and not 0 <= record.label < len(self.classes):
            raise ConfigError(
                f"record '{record.key}' has label {record.label}, outside the "
                f"{len(self.classes)} classes of '{self.path}'"
            )
        if not record.verify():
            # A record changed after its checksum was made (relabelled, re-keyed) would be
            # stored as damaged: refuse it here, where the change still has its cause.
            raise SeqstoreError(
                f"record '{record.key}' does not match its checksum; make changed records "
                "with Record.make so that the checksum covers what is stored"
            )
        self._write(record)
        self.num_records += 1
        self.total_bytes += len(record.data)

    def checkpoint(self, extra: dict[str, Any]) -> None:
        """Make the records written so far durable, so a killed run can resume after them.

        Parameters
        ----------
        extra
            JSON-able facts the caller needs to continue (how far into its source it got,
            what it skipped); returned as :attr:`resumed` by a writer that resumes.
        """
        if not self.resumable:
            raise ConfigError(f"the '{self.format}' writer cannot checkpoint")
        self._sync()
        write_json_atomic(
            self.directory / PROGRESS_NAME,
            {"records": self.num_records, "total_bytes": self.total_bytes, "extra": extra},
        )

    def finish(self) -> Manifest:
        """Complete the store: flush data, seal the manifest, move the store into place."""
        if self._state != "open":
            raise RuntimeError(f"writer for '{self.path}' is {self._state}; cannot finish")
        try:
            self._finish()
            manifest = write_manifest(
                self.directory,
                Manifest(
                    format=self.format,
                    format_version=self.format_version,
                    num_records=self.num_records,
                    total_bytes=self.total_bytes,
                    classes=self.classes,
                    provenance=self.provenance,
                    store_id=uuid.uuid4().hex,
                    data_files={
                        name: (self.directory / name).stat().st_size for name in self.data_files
                    },
                    index_digest=self._index_digest(),
                    shards=self._shards(),
                ),
            )
            for name in (PARTIAL_NAME, PROGRESS_NAME):
                (self.directory / name).unlink(missing_ok=True)
            staging.swap_into_place(self.directory, self.path, overwrite=self.overwrite)
        except FileExistsError:
            self.abort()
            raise StoreExistsError(
                f"'{self.path}' was created by someone else while this store was written; "
                "pass --overwrite (overwrite=True) to replace it"
            ) from None
        except BaseException:
            self.abort()
            raise
        self._state = "finished"
        return manifest

    def abort(self) -> None:
        """Give up: release files and remove the staging directory; ``path`` is untouched."""
        if self._state in ("finished", "aborted"):
            return
        self._state = "aborted"
        try:
            self._abort()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.abort()


def ensure_space(directory: Path, nbytes: int) -> None:
    """Refuse to write ``nbytes`` more into ``directory`` unless its disk has room to spare.

    libhdf5 cannot survive a full disk (it crashes the process, even after the error was
    caught), and LMDB's failure names no cause; checking first gives one clear line.

    Raises
    ------
    DiskFullError
        Fewer than ``nbytes`` plus a margin of 16 MB are free.
    """
    free = shutil.disk_usage(directory).free
    if free < nbytes + _SPACE_MARGIN:
        raise DiskFullError(
            f"the disk of '{directory}' is full ({free / 1e6:.1f} MB free, the next write needs "
            f"{(nbytes + _SPACE_MARGIN) / 1e6:.1f} MB); free some space or choose another "
            "destination, then convert again"
        )


def _check_destination(path: Path, overwrite: bool) -> None:
    """Refuse a destination that holds anything but an empty directory or (with overwrite) a
    store; finish any replacement of it that a killed writer left half done."""
    staging.recover(path)
    if path.is_file():
        raise StoreExistsError(f"'{path}' is a file; give a directory for the new store")
    if path.is_dir() and any(path.iterdir()):
        if not is_store(path):
            raise StoreExistsError(
                f"'{path}' exists and holds files that are not a seqstore store; "
                "choose a new or empty directory"
            )
        if not overwrite:
            raise StoreExistsError(
                f"'{path}' already holds a store; pass --overwrite (overwrite=True) to replace it"
            )


def _adopt_staging(path: Path, marker: dict[str, Any]) -> Path | None:
    """The staging directory of a killed writer of the same store, renamed as this process's."""
    for candidate in staging.dead_staging(path):
        try:
            with open(candidate / PARTIAL_NAME, encoding="utf-8") as f:
                theirs = json.load(f)
        except (OSError, ValueError):
            continue
        if {k: theirs.get(k) for k in marker} == json.loads(json.dumps(marker)):
            mine = staging.new_staging_dir(path)
            mine.rmdir()
            candidate.rename(mine)
            return mine
    return None


def _read_progress(directory: Path) -> dict[str, Any] | None:
    try:
        with open(directory / PROGRESS_NAME, encoding="utf-8") as f:
            progress: dict[str, Any] = json.load(f)
        return progress
    except FileNotFoundError:
        return None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class ShardFilesWriter(Writer):
    """A writer whose format splits its records over files of a size (WebDataset's tar
    shards, Parquet files): ``convert --shard-mb`` is their size (:attr:`writes_shards`).

    Parameters
    ----------
    path, classes, overwrite, provenance
        See :class:`Writer`.
    shard_bytes
        Bytes of records per file, at most (a file holds one record at least).
    """

    writes_shards: ClassVar[bool] = True

    def __init__(
        self, path: str | os.PathLike[str], *, shard_bytes: int = 1 << 30, **kwargs: Any
    ) -> None:
        if shard_bytes < 1:
            raise ConfigError(f"shard_bytes must be >= 1, got {shard_bytes}")
        self.shard_bytes = shard_bytes
        self._held = 0
        super().__init__(path, **kwargs)

    def starts_new_file(self, size: int, has_file: bool) -> bool:
        """Whether a record of ``size`` bytes begins a new file (and counts it in that
        file): the first record, or one that would take the current file past
        :attr:`shard_bytes`."""
        new = not has_file or (self._held > 0 and self._held + size > self.shard_bytes)
        self._held = size if new else self._held + size
        return new

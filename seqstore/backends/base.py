"""The contract every storage backend implements: a Backend, its Reader and its Writer.

The loading engine only ever calls :meth:`Reader.read_block` over contiguous ranges, so that
each read is one sequential pass over the underlying file; :meth:`Reader.read` for a single
record exists where the format allows it (``Backend.random_access``) and is the exception.
Readers open their file handles lazily and reopen them in a new process, so a reader made in
the parent can be handed to forked or spawned DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from .._version import __version__
from ..errors import (
    ConfigError,
    CorruptStoreError,
    DiskFullError,
    NotAStoreError,
    SeqstoreWarning,
    StoreExistsError,
)
from ..manifest import (
    PARTIAL_NAME,
    PROGRESS_NAME,
    Manifest,
    Provenance,
    is_store,
    write_json_atomic,
    write_manifest,
)
from ..records import Record
from . import staging

__all__ = ["Backend", "Reader", "Writer", "ensure_space"]

H = TypeVar("H")
_SPACE_MARGIN = 16 << 20


class Reader(ABC, Generic[H]):
    """Read access to one store.

    Parameters
    ----------
    path
        The store: a directory for seqstore's own formats, a file or a folder tree otherwise.

    Notes
    -----
    Subclasses implement :meth:`_open_handle`, :attr:`manifest` and :meth:`read_block`;
    everything else has a working default. The handle (an LMDB environment, an h5py file)
    is created on first use in each process and never shared across a fork.
    """

    #: Whether records carry checksums made when they were written. Where they do not (image
    #: folders, tensorpack files), a record's checksum is computed as it is read, and checks
    #: nothing: ``verify`` says so rather than report a match.
    stores_checksums: ClassVar[bool] = True
    #: The on-disk layout versions this reader understands.
    layout_versions: ClassVar[tuple[int, ...]] = (1,)
    #: Whether storage order groups records by class (an image folder's sorted walk), so
    #: that a conversion from it shuffles by default.
    class_sorted: ClassVar[bool] = False
    #: Files of the source that are not records (an image folder's ``*_boxes.txt``).
    ignored: Sequence[str] = ()

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._handle_obj: H | None = None
        self._handle_pid = -1
        self._inherited: list[H] = []

    # -- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _open_handle(self) -> H:
        """Open the underlying file(s) in the current process."""

    def _close_handle(self, handle: H) -> None:
        """Close a handle this process opened. The default does nothing."""
        del handle

    @property
    @abstractmethod
    def manifest(self) -> Manifest:
        """The store's metadata: format, record count, class names, provenance."""

    @abstractmethod
    def read_block(self, start: int, stop: int) -> list[Record]:
        """Read records ``start`` to ``stop - 1`` in store order, in one sequential pass.

        Parameters
        ----------
        start, stop
            A range with ``0 <= start <= stop <= len(self)``.

        Returns
        -------
        list of Record
        """

    # -- defaults --------------------------------------------------------------------------
    @property
    def handle(self) -> H:
        """The open handle for this process, opened on first use."""
        pid = os.getpid()
        if self._handle_obj is None or self._handle_pid != pid:
            if self._handle_obj is not None:
                # Inherited over fork: keep it alive, unused; closing a parent's HDF5 file
                # from the child can disturb the parent.
                self._inherited.append(self._handle_obj)
            self._handle_obj = self._open_handle()
            self._handle_pid = pid
        return self._handle_obj

    def __len__(self) -> int:
        return self.manifest.num_records

    @property
    def identity(self) -> str:
        """What tells this store from any other, even one later written at the same path.

        The manifest's ``store_id`` for stores seqstore wrote; for other data, a digest of
        where it is and what the manifest made of it (format, records, bytes, classes).
        A loader state records it, so that it is never resumed on another store.
        """
        m = self.manifest
        if m.store_id is not None:
            return m.store_id
        facts = [m.format, str(self.path.resolve()), m.num_records, m.total_bytes, m.classes]
        return hashlib.sha256(repr(facts).encode()).hexdigest()[:32]

    @property
    def classes(self) -> list[str]:
        """Class names; a record's label indexes this list (empty when names are unknown)."""
        return list(self.manifest.classes)

    @property
    def source_files(self) -> list[Path] | None:
        """The file each record is read from, in record order, for data read in place as
        one file per record (an image folder); None for stores that hold their records."""
        return None

    def read(self, index: int) -> Record:
        """Read one record by position. Only for backends with ``random_access``."""
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"record {index} is out of range for a store of {n} records")
        index %= n
        return self.read_block(index, index + 1)[0]

    def read_raw_block(self, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        """Keys, labels and bytes of a block, without checking that the bytes are images.

        Conversion reads sources this way and checks each file itself, so that a bad file
        can be skipped instead of ending the read.
        """
        return [(r.key, r.label, r.data) for r in self.read_block(start, stop)]

    def labels(self) -> np.ndarray:
        """The label of every record, in store order, as an int64 array.

        The default reads the whole store; backends that keep labels apart override it.
        """
        out = np.empty(len(self), np.int64)
        step = 4096
        for start in range(0, len(self), step):
            block = self.read_block(start, min(start + step, len(self)))
            out[start : start + len(block)] = [r.label for r in block]
        return out

    def check_index(self) -> None:
        """Check the store's per-record index against the manifest's digest.

        Raises
        ------
        CorruptStoreError
            The index was damaged or edited. The default checks nothing (no index).
        """

    def _check_files(self) -> None:
        """Refuse a store whose layout is unknown or whose data files are not the size its
        manifest records: mapping a truncated file would crash the process (SIGBUS)."""
        m = self.manifest
        if m.format_version not in self.layout_versions:
            raise NotAStoreError(
                f"store '{self.path}' has {m.format} layout version {m.format_version} (written "
                f"by seqstore {m.provenance.seqstore_version}); this seqstore reads version "
                f"{', '.join(map(str, self.layout_versions))}: convert the source again"
            )
        for name, size in m.data_files.items():
            try:
                actual = (self.path / name).stat().st_size
            except FileNotFoundError:
                raise CorruptStoreError(
                    f"store '{self.path}' lacks its data file '{name}'; re-create the store "
                    "with seqstore convert"
                ) from None
            if actual != size:
                raise CorruptStoreError(
                    f"data file '{self.path / name}' is {actual} bytes, not the {size} its "
                    "manifest records (truncated or replaced); re-create the store with "
                    "seqstore convert"
                )

    def _check_range(self, start: int, stop: int) -> None:
        n = len(self)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"block [{start}, {stop}) is out of range for a store of {n} records")

    def close(self) -> None:
        """Close this process's handle; the reader reopens on next use."""
        if self._handle_obj is not None and self._handle_pid == os.getpid():
            self._close_handle(self._handle_obj)
        self._handle_obj = None
        self._handle_pid = -1

    def __enter__(self) -> Reader[H]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get the path and options, never an open handle.
        state = self.__dict__.copy()
        state.update(_handle_obj=None, _handle_pid=-1, _inherited=[])
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.path}')"


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
            {**marker, "pid": os.getpid(), "started": self.provenance.created},
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


class Backend(ABC):
    """A storage format: how to recognise, read and write it.

    Capability flags
    ----------------
    can_write : bool
        The backend has a :class:`Writer`.
    random_access : bool
        :meth:`Reader.read` of a single record is cheap.
    keeps_order : bool
        Records read back in the order they were written (an image folder sorts them).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    can_write: ClassVar[bool] = True
    random_access: ClassVar[bool] = True
    keeps_order: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def open_reader(cls, path: str | os.PathLike[str], **options: Any) -> Reader[Any]:
        """Open a reader of the store at ``path``."""

    @classmethod
    def open_writer(cls, path: str | os.PathLike[str], **options: Any) -> Writer:
        """Create a writer of a new store at ``path`` (options: see :class:`Writer`)."""
        raise ConfigError(f"the '{cls.name}' backend cannot write stores; choose another format")

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """Whether ``path`` is data of this format that carries no seqstore manifest."""
        del path
        return False

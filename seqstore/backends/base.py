"""The contract every storage backend implements: a Backend, its Reader and its Writer.

The loading engine only ever calls :meth:`Reader.read_block` over contiguous ranges, so that
each read is one sequential pass over the underlying file; :meth:`Reader.read` for a single
record exists where the format allows it (``Backend.random_access``) and is the exception.
Readers open their file handles lazily and reopen them in a new process, so a reader made in
the parent can be handed to forked or spawned DataLoader workers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from .._version import __version__
from ..errors import ConfigError, StoreExistsError
from ..manifest import (
    MANIFEST_NAME,
    PARTIAL_NAME,
    Manifest,
    Provenance,
    is_store,
    write_json_atomic,
)
from ..records import Record

__all__ = ["Backend", "Reader", "Writer"]

H = TypeVar("H")


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
    aborted (its directory removed, and a store it was to replace put back) when it raises.
    Until :meth:`finish` has run, the directory holds only a partial marker that every reader
    refuses.

    Parameters
    ----------
    path
        Directory to create the store in. It must not exist, be empty, or (with
        ``overwrite``) hold a seqstore store, which is replaced.
    classes
        Class names that labels index; empty when the names are unknown.
    overwrite
        Replace an existing store at ``path``.
    provenance
        How the store is being written, recorded in the manifest.
    """

    format: ClassVar[str]
    format_version: ClassVar[int] = 1

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        classes: Sequence[str] = (),
        overwrite: bool = False,
        provenance: Provenance | None = None,
    ) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self.provenance = provenance or Provenance(seqstore_version=__version__)
        self.num_records = 0
        self.total_bytes = 0
        self._state = "new"
        self._replaced = _prepare_directory(self.path, overwrite)
        write_json_atomic(
            self.path / PARTIAL_NAME,
            {
                "format": self.format,
                "pid": os.getpid(),
                "started": self.provenance.created,
                "source": self.provenance.source,
            },
        )
        self._state = "open"
        try:
            self._open()
        except BaseException:
            self.abort()
            raise

    # -- what subclasses provide -------------------------------------------------------------
    @abstractmethod
    def _open(self) -> None:
        """Create the format's files inside ``self.path``."""

    @abstractmethod
    def _write(self, record: Record) -> None:
        """Append one record."""

    @abstractmethod
    def _finish(self) -> None:
        """Flush and close the format's files; after this they are whole on disk."""

    def _abort(self) -> None:  # noqa: B027 - optional hook
        """Release the format's files after an error; the directory is removed afterwards."""

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

    def finish(self) -> Manifest:
        """Complete the store: flush data, then write the manifest atomically."""
        if self._state != "open":
            raise RuntimeError(f"writer for '{self.path}' is {self._state}; cannot finish")
        try:
            self._finish()
            manifest = Manifest(
                format=self.format,
                format_version=self.format_version,
                num_records=self.num_records,
                total_bytes=self.total_bytes,
                classes=self.classes,
                provenance=self.provenance,
                store_id=uuid.uuid4().hex,
            )
            write_json_atomic(self.path / MANIFEST_NAME, manifest.model_dump(mode="json"))
        except BaseException:
            self.abort()
            raise
        (self.path / PARTIAL_NAME).unlink()
        self._state = "finished"
        if self._replaced is not None:
            shutil.rmtree(self._replaced, ignore_errors=True)
        return manifest

    def abort(self) -> None:
        """Give up: release files and remove the unfinished store's directory."""
        if self._state in ("finished", "aborted"):
            return
        self._state = "aborted"
        try:
            self._abort()
        finally:
            shutil.rmtree(self.path, ignore_errors=True)
            if self._replaced is not None:  # the store it was to replace comes back
                self._replaced.rename(self.path)

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


def _prepare_directory(path: Path, overwrite: bool) -> Path | None:
    """Make ``path`` ready for a new store; return where a store it replaces was moved."""
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
        # Kept aside until the new store is finished, and put back if it is not.
        replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
        shutil.rmtree(replaced, ignore_errors=True)
        path.rename(replaced)
        path.mkdir(parents=True)
        return replaced
    path.mkdir(parents=True, exist_ok=True)
    return None


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
    def open_writer(
        cls,
        path: str | os.PathLike[str],
        *,
        classes: Sequence[str] = (),
        overwrite: bool = False,
        provenance: Provenance | None = None,
    ) -> Writer:
        """Create a writer of a new store at ``path``."""
        raise ConfigError(f"the '{cls.name}' backend cannot write stores; choose another format")

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """Whether ``path`` is data of this format that carries no seqstore manifest."""
        del path
        return False

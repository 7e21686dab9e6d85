"""The reading room: :class:`Reader`, read access to one store, whatever its format.

The loading engine only ever calls :meth:`Reader.read_block` over contiguous ranges, so that
each read is one sequential pass over the underlying file; :meth:`Reader.read` of a single
record exists where the format allows it (:attr:`Reader.random_access`) and is the exception.
A reader is opened from a location: a local path, or a :class:`~seqstore.io.places.Place`
(a directory or a prefix in object storage), and reads its files through
:attr:`Reader.place`, so that one reader per format reads a store wherever it is. Handles
(see :mod:`seqstore.io.per_process`) open lazily in the process that uses them, so a reader
made in the parent can be handed to forked or spawned DataLoader workers.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, NotAStoreError
from ..io.places import LocalPlace, Place
from ..io.ranges import Source
from ..manifest import MANIFEST_NAME, Manifest, parse_manifest
from ..records import Record
from .staging import read_store_manifest

__all__ = ["Reader", "check_layout", "options_taken", "place_of", "read_across", "store_manifest"]


def place_of(location: str | os.PathLike[str] | Place) -> Place:
    """``location`` as a :class:`~seqstore.io.places.Place`: a local path becomes a
    :class:`~seqstore.io.places.LocalPlace`.

    Raises
    ------
    NotAStoreError
        A URL: a store in object storage is opened by :func:`seqstore.open`, which knows
        how to reach it (``storage_options``, a cache).
    """
    if isinstance(location, Place):
        return location
    try:
        return LocalPlace(location)
    except NotAStoreError:
        raise NotAStoreError(
            f"'{os.fspath(location)}' is a URL; open it with seqstore.open(url, "
            "storage_options=...), which knows how to reach it"
        ) from None


def store_manifest(place: Place) -> Manifest:
    """The manifest of the store at ``place``, for its reader: on a local disk, a replace
    cut short is finished first and an unfinished write named
    (:func:`~seqstore.backends.staging.read_store_manifest`).

    Raises
    ------
    NotAStoreError
        No manifest there.
    PartialStoreError
        The store's writer never finished.
    """
    if place.local is not None:
        return read_store_manifest(place.local)
    try:
        raw = place.read_bytes(MANIFEST_NAME)
    except FileNotFoundError:
        raise NotAStoreError(
            f"'{place.where}' holds no seqstore store (no {MANIFEST_NAME})"
        ) from None
    return parse_manifest(raw, f"{place.where}/{MANIFEST_NAME}")


@contextmanager
def options_taken(reader: str, options: dict[str, Any], hint: str = "") -> Iterator[None]:
    """Around making a reader with ``options``: an option its constructor does not take
    becomes one :class:`~seqstore.errors.ConfigError` naming ``reader`` (and ``hint``)."""
    try:
        yield
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(
            f"{reader} takes no option {', '.join(repr(k) for k in options)}{hint}"
        ) from None


def check_layout(
    manifest: Manifest, where: str | os.PathLike[str], versions: Sequence[int]
) -> None:
    """Refuse the store at ``where`` unless its manifest's layout version is one of
    ``versions`` (those its reader knows).

    Raises
    ------
    NotAStoreError
        Another layout: written by a seqstore older or newer than this one.
    """
    if manifest.format_version not in versions:
        raise NotAStoreError(
            f"store '{where}' has {manifest.format} layout version {manifest.format_version} "
            f"(written by seqstore {manifest.provenance.seqstore_version}); this seqstore "
            f"reads version {', '.join(map(str, versions))}: convert the source again"
        )


def read_across(
    bounds: np.ndarray, start: int, stop: int, read: Callable[[int, int, int], list[Record]]
) -> list[Record]:
    """Records ``start`` to ``stop - 1`` of parts laid end to end, part ``i`` holding
    ``bounds[i]`` to ``bounds[i + 1] - 1`` (a sharded store's shards, a mix's sources):
    ``read(i, lo, hi)`` of the records each part touched holds, in order, empty parts
    passed over."""
    out: list[Record] = []
    i = int(np.searchsorted(bounds, start, side="right")) - 1
    while start < stop:
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if hi > start:
            end = min(stop, hi)
            out += read(i, start - lo, end - lo)
            start = end
        i += 1
    return out


class Reader(ABC):
    """Read access to one store.

    Parameters
    ----------
    location
        Where the store is: a directory for seqstore's own formats, a file or a folder tree
        otherwise; a local path, or a :class:`~seqstore.io.places.Place` (which is how
        :func:`seqstore.open` hands over a store in object storage). A reader reads its
        files through :attr:`place`, and only a reader of local files uses :attr:`path`.

    Notes
    -----
    Subclasses implement :attr:`manifest` and :meth:`read_block`; everything else has a
    working default. A reader that holds handles keeps them in
    :class:`~seqstore.io.per_process.ProcessLocal` and releases them in :meth:`close`.
    """

    #: Whether records carry checksums made when they were written. Where they do not (image
    #: folders, tensorpack files), a record's checksum is computed as it is read, and checks
    #: nothing: ``verify`` says so rather than report a match.
    stores_checksums: ClassVar[bool] = True
    #: Whether :meth:`read` can fetch one record by position. A format that can only be
    #: streamed (a compressed archive, say) sets it False, and :meth:`read` refuses.
    random_access: ClassVar[bool] = True
    #: The on-disk layout versions this reader understands.
    layout_versions: ClassVar[tuple[int, ...]] = (1,)
    #: Whether storage order groups records by class (an image folder's sorted walk), so
    #: that a conversion from it shuffles by default.
    class_sorted: ClassVar[bool] = False
    #: Whether each record is a file of its own (an image folder read in place), as cheap to
    #: read alone as in a block: the Loader then permutes a shuffled epoch record by record.
    records_are_files: ClassVar[bool] = False
    #: Whether :meth:`labels` reads labels kept apart from the records, without reading a
    #: record (the check of a loader's order then reads them all; else it samples records).
    labels_apart: bool = False
    #: Files of the source that are not records (an image folder's ``*_boxes.txt``).
    ignored: Sequence[str] = ()

    def __init__(self, location: str | os.PathLike[str] | Place) -> None:
        self.place = place_of(location)
        self.location: str | os.PathLike[str] = (
            self.place.where if isinstance(location, Place) else location
        )

    @property
    def path(self) -> Path:
        """The store as a local path, for readers of local files.

        Raises
        ------
        NotAStoreError
            The store is in object storage, which this reader cannot read.
        """
        if self.place.local is None:
            raise NotAStoreError(
                f"'{self.place.where}' is not a local path; the {type(self).__name__} reads "
                "local files only"
            )
        return self.place.local

    # -- what subclasses provide -------------------------------------------------------------
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
        local = self.place.local
        where = str(local.resolve()) if local is not None else self.place.where
        facts = [m.format, where, m.num_records, m.total_bytes, m.classes]
        return hashlib.sha256(repr(facts).encode()).hexdigest()[:32]

    @property
    def shard_bounds(self) -> np.ndarray:
        """Where the store's shards meet, in record numbers.

        An int64 array ``[0, b_1, ..., b_k-1, len(self)]`` of ``k + 1`` bounds: shard ``i``
        holds records ``shard_bounds[i]`` to ``shard_bounds[i + 1] - 1``. A
        :meth:`read_block` within one shard is one sequential read of one file; one that
        crosses a bound is read as one read per shard it touches, so a reader of blocks cuts
        them at the bounds. A store of one data file is one shard, ``[0, len(self)]``. Equal
        neighbours are empty shards (every record of one was skipped at conversion).
        """
        return np.array([0, len(self)], np.int64)

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
        """Read one record by position.

        Raises
        ------
        ConfigError
            The format has no :attr:`random_access`.
        """
        if not self.random_access:
            raise ConfigError(
                f"{type(self).__name__} of '{os.fspath(self.location)}' cannot read one record "
                "by position; read blocks with read_block"
            )
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

    def check_index(self) -> None:  # noqa: B027 - optional hook
        """Check the store's per-record index against the manifest's digest.

        Raises
        ------
        CorruptStoreError
            The index was damaged or edited. The default checks nothing (no index).
        """

    def verify_files(self) -> tuple[int, list[str]] | None:
        """Check each data file against the hash the format stores for it (MDS shards' sha1
        or xxh64), reading each whole: how many files were checked, and the names of those
        that fail; None where the format stores no file hashes (or none this machine can
        compute). The default: None."""
        return None

    def open_data(self, name: str, *, direct: bool | None = False) -> Source:
        """The data file ``name`` of the store, once its layout is known and the file is the
        size its manifest records (see :meth:`seqstore.io.places.Place.open`).

        Raises
        ------
        NotAStoreError
            A layout this reader does not know (written by another seqstore).
        CorruptStoreError
            The file is missing or not its size: reading a truncated file through a memory
            map would crash the process (SIGBUS).
        """
        m = self.manifest
        check_layout(m, self.place.where, self.layout_versions)
        return self.place.open(name, m.data_files.get(name, -1), direct=direct)

    def _check_range(self, start: int, stop: int) -> None:
        n = len(self)
        if not 0 <= start <= stop <= n:
            raise IndexError(f"block [{start}, {stop}) is out of range for a store of {n} records")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release this process's handles; the reader reopens them on next use."""

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{os.fspath(self.location)}')"

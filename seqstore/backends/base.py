"""The contract every storage backend implements: a :class:`Backend` names a format and the
:class:`Reader` and :class:`Writer` classes that read and write it.

A backend's capabilities live where they gate: ``Backend.writer_cls`` is None for a format
seqstore only reads (and :meth:`Backend.open_writer` refuses), ``Reader.random_access`` gates
:meth:`Reader.read`, ``Backend.keeps_order`` tells the conformance suite in which order
records come back. The reader and writer rooms are :mod:`.reader` and :mod:`.writer`.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from ..errors import ConfigError
from ..io.places import Place
from .reader import Reader
from .writer import Writer, ensure_space

__all__ = ["Backend", "Reader", "Writer", "ensure_space"]


class Backend:
    """A storage format: how to recognise, read and write it.

    A backend is declarative; subclasses set the class variables and, for data that carries
    no seqstore manifest, override :meth:`sniff`::

        class LMDBBackend(Backend):
            name = "lmdb"
            reader_cls = LMDBReader
            writer_cls = LMDBWriter

    Attributes
    ----------
    name : str
        What users pass as ``backend=`` and ``--format``; the manifest's ``format``.
    description : str
        One line for listings.
    reader_cls : type of Reader
        Made by :meth:`open_reader` with the location and the reader's options.
    writer_cls : type of Writer or None
        Made by :meth:`open_writer`; None for a format seqstore can only read.
    keeps_order : bool
        Whether records read back in the order they were written (an image folder reads
        them in sorted key order).
    reads_urls : bool
        Whether its reader reads stores in object storage (by URL) as well as local ones.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    reader_cls: ClassVar[type[Reader]]
    writer_cls: ClassVar[type[Writer] | None] = None
    keeps_order: ClassVar[bool] = True
    reads_urls: ClassVar[bool] = True

    @classmethod
    def open_reader(cls, location: str | os.PathLike[str] | Place, **options: Any) -> Reader:
        """Open a reader of the store of one data file at ``location`` (a local path, or a
        :class:`~seqstore.io.places.Place`), with the reader's ``options``.

        :func:`seqstore.open` is the one place that opens any store: it recognises the
        format and reads a sharded store through a
        :class:`~seqstore.backends.sharded.ShardedReader` of this backend's readers.
        """
        return cls.reader_cls(location, **options)

    @classmethod
    def open_writer(cls, path: str | os.PathLike[str], **options: Any) -> Writer:
        """Create a writer of a new store at ``path`` (options: see :class:`Writer` and the
        backend's writer). A sharded store is written by
        :func:`~seqstore.backends.sharded.sharded_writer_cls` of this backend.

        Raises
        ------
        ConfigError
            The backend has no writer.
        """
        if cls.writer_cls is None:
            raise ConfigError(
                f"the '{cls.name}' backend cannot write stores; choose another format"
            )
        return cls.writer_cls(path, **options)

    @classmethod
    def writer_shards(cls) -> bool:
        """Whether the format's writer splits its own files into shards of a size
        (:attr:`Writer.writes_shards`)."""
        return cls.writer_cls is not None and cls.writer_cls.writes_shards

    @classmethod
    def sniff(cls, place: Place) -> bool:
        """Whether ``place`` holds data of this format that carries no seqstore manifest
        (read only what telling it takes: a header, a file's name)."""
        del place
        return False

"""The contract every storage backend implements: a :class:`Backend` names a format and the
:class:`Reader` and :class:`Writer` classes that read and write it.

A backend's capabilities live where they gate: ``Backend.writer_cls`` is None for a format
seqstore only reads (and :meth:`Backend.open_writer` refuses), ``Reader.random_access`` gates
:meth:`Reader.read`, ``Backend.keeps_order`` tells the conformance suite in which order
records come back. The reader and writer rooms are :mod:`.reader` and :mod:`.writer`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ConfigError
from ..manifest import is_sharded
from .reader import Reader, is_local
from .staging import recover
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
    def open_reader(cls, location: str | os.PathLike[str], **options: Any) -> Reader:
        """Open a reader of the store at ``location`` (options: see the backend's reader).

        A sharded store of this format is read through a
        :class:`~seqstore.backends.sharded.ShardedReader`, which opens one reader of this
        backend per shard, with the same options.
        """
        if is_local(location):
            path = Path(location)
            recover(path)  # a replace cut short may be hiding a sharded store
            if is_sharded(path):
                from .sharded import ShardedReader

                return ShardedReader(path, backend=cls, **options)
        return cls.reader_cls(location, **options)

    @classmethod
    def open_writer(
        cls, path: str | os.PathLike[str], *, shard_bytes: int | None = None, **options: Any
    ) -> Writer:
        """Create a writer of a new store at ``path`` (options: see :class:`Writer`).

        Parameters
        ----------
        path
            Directory of the new store.
        shard_bytes
            Write a sharded store (:class:`~seqstore.backends.sharded.ShardedWriter`): a new
            shard begins once the last one holds this many bytes of records.
        **options
            See :class:`Writer` and the backend's writer.

        Raises
        ------
        ConfigError
            The backend has no writer, or (with ``shard_bytes``) cannot write shards.
        """
        if cls.writer_cls is None:
            raise ConfigError(
                f"the '{cls.name}' backend cannot write stores; choose another format"
            )
        if shard_bytes is not None:
            from .sharded import sharded_writer_cls

            return sharded_writer_cls(cls)(path, shard_bytes=shard_bytes, **options)
        return cls.writer_cls(path, **options)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        """Whether ``path`` is data of this format that carries no seqstore manifest."""
        del path
        return False

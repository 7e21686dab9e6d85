"""Where a store's files are: a local directory (or file), or a prefix in object storage.

A :class:`Place` opens the files of a store by name, as :class:`~seqstore.io.ranges.Source`
objects, and reads small ones (a manifest) whole. A format reader is written against it
once, and reads the same way from a disk, a bucket, or a bucket through a local cache:

- :class:`LocalPlace`: a path on this machine; its files are
  :class:`~seqstore.io.local.LocalFile` objects.
- :class:`ObjectPlace`: a URL (``s3://``, ``gs://``, ``https://``, any fsspec URL); its files
  are :class:`~seqstore.io.object.ObjectFile` objects, or, with a cache,
  :class:`~seqstore.io.cached.CachedFile` objects that switch to a whole local copy.

The name ``""`` is the place itself: a store that is one file (a tensorpack LMDB file).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

from ..errors import CorruptStoreError, NotAStoreError
from .cache import ShardCache
from .cached import CachedFile
from .local import LocalFile
from .object import ObjectFile, ObjectStore
from .patterns import matching
from .ranges import Source

__all__ = ["LocalPlace", "ObjectPlace", "Place", "is_url"]


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a URL (``s3://...``) rather than a local path."""
    return "://" in os.fspath(location)


class Place(ABC):
    """The files of one store, wherever they are.

    Attributes
    ----------
    where : str
        The path or URL, for messages.
    remedy : str
        What a user does about a damaged store here, for messages.
    """

    where: str
    remedy: str
    #: Where set, the place stands for the files under it that this pattern names
    #: (:mod:`seqstore.io.patterns`), and :meth:`files` lists only those.
    pattern: str | None = None

    @property
    def local(self) -> Path | None:
        """The place as a local path; None in object storage."""
        return None

    @abstractmethod
    def source(self, name: str = "", *, direct: bool | None = False) -> Source:
        """The file ``name`` (``""``: the place itself) as a byte source.

        ``direct`` is :class:`~seqstore.io.local.LocalFile`'s, for a file on this machine.

        Raises
        ------
        FileNotFoundError
            No such file.
        """

    @abstractmethod
    def read_bytes(self, name: str) -> bytes:
        """The whole (small) file ``name``.

        Raises
        ------
        FileNotFoundError
            No such file.
        """

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether the file ``name`` is there."""

    @abstractmethod
    def files(self) -> list[str]:
        """The names of every file under the place, at any depth, sorted (``""`` for a
        place that is one file)."""

    @abstractmethod
    def child(self, name: str) -> Place:
        """The place ``name`` inside this one (a shard of a sharded store)."""

    def open(self, name: str, size: int, *, direct: bool | None = False) -> Source:
        """The data file ``name`` of a store whose manifest records it as ``size`` bytes.

        Raises
        ------
        CorruptStoreError
            The file is missing, or not the size its manifest records (truncated or
            replaced): mapping or reading it would go wrong later.
        """
        try:
            source = self.source(name, direct=direct)
        except FileNotFoundError:
            raise CorruptStoreError(
                f"store '{self.where}' lacks its data file '{name}'; {self.remedy}"
            ) from None
        if source.size != size:
            source.close()
            raise CorruptStoreError(
                f"data file '{source.name}' is {source.size} bytes, not the {size} its "
                f"manifest records (truncated or replaced); {self.remedy}"
            )
        return source

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.where}')"


class LocalPlace(Place):
    """A store on this machine: a directory, or a file for a store of one file.

    Parameters
    ----------
    path
        The directory or file.
    """

    remedy = "re-create the store with seqstore convert"

    def __init__(self, path: str | os.PathLike[str], pattern: str | None = None) -> None:
        if is_url(path):
            raise NotAStoreError(f"'{os.fspath(path)}' is a URL, not a local path")
        self.path = Path(path)
        self.pattern = pattern
        self.where = str(self.path / pattern) if pattern else str(self.path)

    @property
    def local(self) -> Path:
        # docstring inherited
        return self.path

    def _file(self, name: str) -> Path:
        return self.path / name if name else self.path

    def source(self, name: str = "", *, direct: bool | None = False) -> LocalFile:
        # docstring inherited
        return LocalFile(self._file(name), direct=direct)

    def read_bytes(self, name: str) -> bytes:
        # docstring inherited
        return self._file(name).read_bytes()

    def exists(self, name: str) -> bool:
        # docstring inherited
        return self._file(name).is_file()

    def files(self) -> list[str]:
        # docstring inherited
        if self.path.is_file() and self.pattern is None:
            return [""]
        out = []
        for root, dirs, names in os.walk(self.path, followlinks=True):
            dirs.sort()
            rel = Path(root).relative_to(self.path)
            out += [(rel / name).as_posix() for name in names]
        out.sort()
        return out if self.pattern is None else matching(out, self.pattern)

    def child(self, name: str) -> LocalPlace:
        # docstring inherited
        return LocalPlace(self.path / name)


class ObjectPlace(Place):
    """A store in object storage.

    Parameters
    ----------
    store
        Its URL and the means to reach it.
    cache
        Where whole copies of its files are kept (see :mod:`seqstore.io.cached`); None
        reads every byte remotely.
    """

    remedy = "upload the store again with seqstore convert"

    def __init__(
        self, store: ObjectStore, cache: ShardCache | None = None, pattern: str | None = None
    ) -> None:
        self.store = store
        self.cache = cache
        self.pattern = pattern
        self.where = f"{store.url}/{pattern}" if pattern else store.url

    def _url(self, name: str) -> str:
        return self.store.join(name) if name else self.store.url

    def source(self, name: str = "", *, direct: bool | None = False) -> Source:
        # docstring inherited
        del direct
        remote = ObjectFile(self.store, self._url(name))
        return remote if self.cache is None else CachedFile(remote, self.cache)

    def read_bytes(self, name: str) -> bytes:
        # docstring inherited
        return bytes(self.store.cat(self._url(name)))

    def exists(self, name: str) -> bool:
        # docstring inherited
        return self.store.exists(self._url(name))

    def files(self) -> list[str]:
        # docstring inherited
        base = self.store.url
        found = self.store.find(base)
        if found == [base] and self.pattern is None:
            return [""]
        out = sorted(f[len(base) + 1 :] for f in found if f.startswith(base + "/"))
        return out if self.pattern is None else matching(out, self.pattern)

    def child(self, name: str) -> ObjectPlace:
        # docstring inherited
        store = ObjectStore(self.store.join(name), self.store.storage_options, self.store.retry)
        return ObjectPlace(store, self.cache)

"""LMDB stores behind a URL: read from a whole copy in the local cache.

LMDB reads its file through a memory map, and its records lie wherever its B-tree put its
pages: a block of records is not one byte range of the file, and object storage cannot be
mapped. So an LMDB store at a URL is downloaded whole into the cache (``cache_dir``) by the
first process that opens it (the others wait for it), and read there as a local store;
without a cache it is refused with one line that says what to do. A store meant to be read
from object storage is best converted to HDF5, whose blocks are ranged GETs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..backends.lmdb import LMDBReader
from ..backends.lmdb_env import DATA_FILE
from ..errors import ConfigError, CorruptStoreError
from ..manifest import MANIFEST_NAME, Manifest
from .cache import ShardCache, cache_key
from .location import Remote, object_version

__all__ = ["RemoteLMDBReader"]


class RemoteLMDBReader(LMDBReader):
    """Reader of a seqstore LMDB store at a URL, through a whole copy in the cache.

    Parameters
    ----------
    location
        The store's URL.
    remote
        Where it is and how to reach it.
    manifest, manifest_bytes
        Its manifest, as fetched and as parsed.
    cache
        The local cache the store is copied into.
    readahead
        As :class:`~seqstore.backends.lmdb.LMDBReader`.

    Raises
    ------
    ConfigError
        No cache was given, or the store does not fit in it.
    """

    def __init__(
        self,
        location: str,
        *,
        remote: Remote,
        manifest: Manifest,
        manifest_bytes: bytes,
        cache: ShardCache | None,
        readahead: bool = True,
    ) -> None:
        size = sum(manifest.data_files.values())
        if cache is None:
            raise ConfigError(
                f"LMDB store '{location}' cannot be read in place from object storage (LMDB "
                "memory-maps its file); pass cache_dir= to download it whole into a local "
                "cache, or convert it to HDF5 (--format hdf5), whose blocks are read by "
                "ranged requests"
            )
        if cache.limit_bytes is not None and not cache.fits(size):
            raise ConfigError(
                f"LMDB store '{location}' ({size / 1e9:.2f} GB) does not fit in the cache of "
                f"{cache.limit_bytes / 1e9:.2f} GB at '{cache.directory}' (cache_limit_gb); "
                "raise the limit, or convert the store to HDF5 to read it by ranged requests"
            )
        self.remote = remote
        self.cache = cache
        self.url = location
        self._manifest_bytes = manifest_bytes
        self.data_url = remote.join(DATA_FILE)
        try:
            info = remote.info(self.data_url)
        except FileNotFoundError:
            raise CorruptStoreError(
                f"store '{location}' lacks its data file '{DATA_FILE}'; upload the store "
                "again with seqstore convert"
            ) from None
        self.data_size = manifest.data_files.get(DATA_FILE, -1)
        if info.get("size") != self.data_size:
            raise CorruptStoreError(
                f"data file '{self.data_url}' is {info.get('size')} bytes, not the "
                f"{self.data_size} its manifest records (replaced or cut short); upload the "
                "store again with seqstore convert"
            )
        self.cache_key = cache_key(self.url, f"{manifest.store_id}:{object_version(info)}")
        self._entry = self._fetch()
        super().__init__(self._entry, readahead=readahead)
        self.location = location

    @property
    def path(self) -> Path:
        """The local copy of the store in the cache."""
        return self._entry

    def _fetch(self) -> Path:
        """The store's copy in the cache, downloaded first if it is not there."""
        entry = self.cache.fill(self.cache_key, self.data_size, self._download, block=True)
        if entry is None:  # only when it does not fit, which __init__ refused
            raise ConfigError(f"LMDB store '{self.url}' does not fit in the cache")
        return entry

    def _download(self, directory: Path) -> None:
        self.remote.get_file(self.data_url, directory / DATA_FILE)
        if (directory / DATA_FILE).stat().st_size != self.data_size:
            raise CorruptStoreError(f"'{self.data_url}' changed while it was downloaded")
        (directory / MANIFEST_NAME).write_bytes(self._manifest_bytes)

    def _acquire(self) -> Any:
        # A process that starts after the copy was evicted downloads it again.
        self._entry = self._fetch()
        return super()._acquire()

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{os.fspath(self.url)}')"

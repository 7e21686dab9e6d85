"""Sharded stores behind a URL: :class:`~seqstore.backends.sharded.ShardedReader` over
remote shards.

The store's manifest lists its shards; each shard is an ordinary store at
``URL/shard-NNNNN``, read by the format's remote reader: an HDF5 shard block by block with
one ranged GET per block, an LMDB shard through a whole copy in the cache. A block that
crosses shards is one read per shard. A shard is opened (its manifest fetched and checked
against the store's) on first use, in each process.
"""

from __future__ import annotations

import os
from typing import Any

from ..backends.reader import Reader
from ..backends.sharded import ShardedReader
from ..manifest import Manifest, Shard
from .cache import ShardCache
from .location import Remote

__all__ = ["RemoteShardedReader"]


class RemoteShardedReader(ShardedReader):
    """Reader of a sharded seqstore store at a URL.

    Made by :func:`seqstore.open` for the URL of a sharded store.

    Parameters
    ----------
    location
        The store's URL.
    remote
        Where it is and how to reach it.
    manifest
        Its manifest, as fetched.
    cache
        The local cache of the shards' data files (required for LMDB shards).
    **options
        Passed to each shard's reader (``readahead`` of LMDB).
    """

    def __init__(
        self,
        location: str,
        *,
        remote: Remote,
        manifest: Manifest,
        cache: ShardCache | None = None,
        **options: Any,
    ) -> None:
        self.remote = remote
        self.cache = cache
        self._fetched = manifest
        super().__init__(location, **options)

    def _read_manifest(self) -> Manifest:
        return self._fetched

    def _shard_location(self, entry: Shard) -> str:
        return self.remote.join(entry.name)

    def _shard_reader(self, where: str | os.PathLike[str]) -> Reader:
        from . import fetch_manifest, format_reader

        # Each shard its own Remote (its URL, its request counters), on the same filesystem.
        remote = Remote(os.fspath(where), self.remote.storage_options, self.remote.retry)
        raw, manifest = fetch_manifest(remote)
        return format_reader(remote, manifest, raw, self.cache, self._options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self._where}', {len(self.shards)} shards)"

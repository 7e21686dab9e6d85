"""A sharded store's names and digests, shared by its reader and its writer."""

from __future__ import annotations

from ...errors import CorruptStoreError
from ...manifest import Manifest, Shard, index_digest

__all__ = ["shard_entry", "shard_name", "store_index_digest"]


def shard_name(index: int) -> str:
    """The directory of shard ``index`` inside a sharded store: ``shard-00042``."""
    return f"shard-{index:05d}"


def store_index_digest(shards: list[Shard]) -> str:
    """The store's ``index_digest``: made of its shards' index digests, so that it depends
    on the records alone, not on how many processes wrote them."""
    return index_digest(*((s.index_digest or "").encode() for s in shards))


def shard_entry(name: str, start: int, manifest: Manifest) -> Shard:
    """The manifest's entry of the finished shard ``name`` whose manifest is ``manifest``
    and whose first record is the store's record ``start``."""
    if manifest.digest is None:
        raise CorruptStoreError(f"shard '{name}' has a manifest without its digest")
    return Shard(
        name=name,
        start=start,
        num_records=manifest.num_records,
        total_bytes=manifest.total_bytes,
        data_files=manifest.data_files,
        index_digest=manifest.index_digest,
        digest=manifest.digest,
    )

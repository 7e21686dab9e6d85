"""Sharded stores: ordinary stores of one format under one manifest, read as one store.

Layout of a sharded store directory::

    seqstore.json      the manifest: format, records, classes, ... and ``shards``
    shard-00000/       an ordinary store of that format: its own seqstore.json and data file
    shard-00001/
    ...

Shard ``i`` holds the store's records ``shards[i].start`` to ``shards[i].stop - 1``, so
record numbers are store-wide and run on from one shard to the next. Each shard is a complete
store by itself, whose manifest vouches for its data file; the store's manifest lists each
shard's record range, bytes, data file sizes, index digest and manifest digest
(:class:`~seqstore.manifest.Shard`), so a shard swapped for another or edited is refused. The
store's ``index_digest`` is made of its shards' index digests: it depends on the records
alone, not on how many processes wrote them. :attr:`Reader.shard_bounds
<seqstore.backends.reader.Reader.shard_bounds>` says where the shards meet.

A sharded store is written like any other (:mod:`.staging`): in a hidden staging directory,
where shards appear one by one, each written through a staging directory of its own and
moved into place when finished, by any number of processes at once. Only once every shard
is there does :class:`ShardedWriter` write the manifest and move the store into place, so
a sharded store is whole or absent, and a killed conversion leaves finished shards that
``convert --resume`` keeps.
"""

from __future__ import annotations

from .layout import shard_name
from .reader import OPEN_SHARDS, ShardedReader
from .writer import (
    ShardedWriter,
    finished_shard,
    open_shard_writer,
    shard_provenance,
    sharded_writer_cls,
)

__all__ = [
    "OPEN_SHARDS",
    "ShardedReader",
    "ShardedWriter",
    "finished_shard",
    "open_shard_writer",
    "shard_name",
    "shard_provenance",
    "sharded_writer_cls",
]

"""Shard files that open with a table of their samples' offsets: MosaicML Streaming's MDS
shards and litdata's chunks, read in place.

Both projects lay a shard out as::

    uint32 n | uint32 offsets[n + 1] | ... | sample 0 | sample 1 | ... | sample n-1

(offsets from the start of the file; ``offsets[n]`` is where the last sample ends), and a
sample as a header of uint32 sizes followed by its fields' bytes, in order. MDS puts in the
header the sizes of the columns that have no fixed size (its columns sorted by name); litdata
those of every leaf of its pytree. :class:`Fields` describes a format's samples and finds a
field in one; :class:`OffsetShardsReader` reads the shards: a block is one read of a run of
samples, each image sliced out of its sample.

Labels are read at open, one small read per sample (from the sample's start or end where the
fields around the label have fixed sizes, else after its header), and kept with the offsets
in the index directory, tied to each shard's identity, as a tar shard's members are.

Compressed shards cannot be read in place: each is unpacked whole on first use, into a
local directory shared by processes (:class:`~seqstore.io.cache.ShardCache`), as both
projects' own loaders unpack them into their cache; its hash is checked then, where the
index records one.
"""

from __future__ import annotations

from .layout import Fields, Shard
from .packing import hasher, unpack
from .reader import OffsetShardsReader

__all__ = ["Fields", "OffsetShardsReader", "Shard", "hasher", "unpack"]

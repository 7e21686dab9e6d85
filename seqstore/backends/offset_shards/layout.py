"""The layout of MDS shards and litdata chunks: a dataset's fields, its shards as its index
records them, and where a field is in a sample (see :mod:`seqstore.backends.offset_shards`)."""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ...io.ranges import Source

__all__ = ["Fields", "Shard", "encoding_kind", "fields_of_kind", "locate"]


@functools.cache
def _sizes(n: int) -> struct.Struct:
    """``n`` little-endian uint32s, made once (a sample's header is read per sample)."""
    return struct.Struct(f"<{n}I")


@dataclass(frozen=True)
class Fields:
    """The fields of a dataset's samples.

    Attributes
    ----------
    names, encodings
        Each field's name and the writer's name for its encoding, in sample order.
    sizes
        Each field's fixed size in bytes; None where it varies.
    headed
        Whether the sample's header holds the field's size.
    """

    names: list[str]
    encodings: list[str]
    sizes: list[int | None]
    headed: list[bool]

    @property
    def header(self) -> struct.Struct:
        """A sample's header: the uint32 sizes of its headed fields."""
        return _sizes(sum(self.headed))

    @property
    def header_bytes(self) -> int:
        """The length of a sample's header."""
        return self.header.size

    def listing(self) -> str:
        """The fields and their encodings, for messages."""
        return ", ".join(f"{n} ({e})" for n, e in zip(self.names, self.encodings, strict=True))

    def span(self, sample: bytes | memoryview, i: int) -> tuple[int, int]:
        """Where field ``i`` is in ``sample`` (a whole sample's bytes)."""
        heads = self.header.unpack_from(sample, 0)
        pos, k = self.header_bytes, 0
        for j in range(i + 1):
            size = self.sizes[j]
            if self.headed[j]:
                size = heads[k]
                k += 1
            assert size is not None
            if j == i:
                return pos, pos + size
            pos += size
        raise IndexError(i)


@dataclass(frozen=True)
class Shard:
    """One shard as its dataset's index records it.

    Attributes
    ----------
    name
        The file as stored (the compressed one, where it is compressed), relative to the
        dataset.
    size
        Its size in bytes; None where the index does not record it.
    compression
        The compression of the whole file (``"zstd"``, ``"gz"``, ``"bz2"``, ``"br"``,
        ``"snappy"``, with or without ``":level"``); None for none.
    hashes
        Hex digests of the stored file by algorithm (``sha1``, ``xxh64`` ...).
    samples
        Its sample count, as the index records it.
    fields
        Its samples' fields.
    """

    name: str
    size: int | None
    compression: str | None
    hashes: dict[str, str]
    samples: int
    fields: Fields


def locate(
    source: Source, fields: Fields, offsets: np.ndarray, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where field ``i`` of each sample of a shard (``offsets``: its table) is in the file:
    offsets and lengths. Reads nothing where the fields before it, or those after it, all
    have fixed sizes; else reads each sample's header."""
    starts, ends = offsets[:-1], offsets[1:]
    before, after = fields.sizes[:i], fields.sizes[i + 1 :]
    own = fields.sizes[i]
    if own is not None and None not in before:
        return starts + fields.header_bytes + sum(s for s in before if s), np.full_like(starts, own)
    if own is not None and None not in after:
        return ends - sum(s for s in after if s) - own, np.full_like(starts, own)
    heads = source.read_extents([(int(s), fields.header_bytes) for s in starts.tolist()])
    spans = [fields.span(head, i) for head in heads]
    at = starts + np.array([lo for lo, _ in spans], np.int64)
    return at, np.array([hi - lo for lo, hi in spans], np.int64)


def encoding_kind(encoding: str) -> str:
    """An encoding's family (litdata's ``image:png`` is an ``image``)."""
    return encoding.split(":", 1)[0]


def fields_of_kind(fields: Fields, kinds: Iterable[str]) -> list[int]:
    """The fields whose encoding is of one of ``kinds``."""
    return [i for i, e in enumerate(fields.encodings) if encoding_kind(e) in kinds]

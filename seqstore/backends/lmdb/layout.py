"""The layout of an LMDB store: one B-tree, records under ordered keys.

Layout of a store directory::

    seqstore.json     manifest (format "lmdb")
    data.mdb          the LMDB environment

Record ``i`` lives under the 8-byte big-endian key ``i``, so key order is write order and a
cursor walking ``[start, stop)`` reads consecutive leaf pages: a sequential read. Its value is
a fixed little-endian header ``<iIIIH`` (label, width, height, CRC-32, key length), the key
in UTF-8, then the image bytes. The labels (int32) and checksums (uint32) of all records are
also kept, as arrays, under the keys ``b"\\xffseqstore:labels"`` and
``b"\\xffseqstore:checksums"``, so the engine and the benchmark can get them without reading
any image; the manifest's ``index_digest`` is
:func:`~seqstore.manifest.index_digest` of ``(labels, checksums)``. The environment holds no
lock file: readers open it with ``lock=False``.

Layout version 2 (seqstore 0.2) checksums the key, label and size with the bytes; version 1
stores are refused with a line that says to convert again.
"""

from __future__ import annotations

import struct

from ...records import Record, encode_key

__all__ = [
    "CHECKSUMS_KEY",
    "DATA_FILE",
    "HEADER",
    "LABELS_KEY",
    "decode_record",
    "encode_record",
    "index_key",
]

DATA_FILE = "data.mdb"
HEADER = struct.Struct("<iIIIH")  # label, width, height, crc32, key length
LABELS_KEY = b"\xffseqstore:labels"
CHECKSUMS_KEY = b"\xffseqstore:checksums"


def index_key(i: int) -> bytes:
    """The key of record ``i``: 8 bytes, big-endian, so that key order is write order."""
    return i.to_bytes(8, "big")


def encode_record(record: Record) -> bytes:
    """The value a record is stored as: the header, the key, the image bytes."""
    key = encode_key(record.key)
    header = HEADER.pack(record.label, record.width, record.height, record.checksum, len(key))
    return b"".join((header, key, record.data))


def decode_record(value: memoryview | bytes) -> Record:
    """The record a value holds (see :func:`encode_record`)."""
    label, width, height, crc, key_len = HEADER.unpack_from(value)
    key_end = HEADER.size + key_len
    key = bytes(value[HEADER.size : key_end]).decode("utf-8", "surrogateescape")
    return Record(key, label, bytes(value[key_end:]), width, height, crc)

"""What one record of a store is."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

__all__ = ["Record", "checksum", "encode_key"]

# label, width, height, key length: fixed-size, so no two records share the hashed stream.
_FIELDS = struct.Struct("<iIII")


def encode_key(key: str) -> bytes:
    """A record key as stored: UTF-8, with the surrogate escapes of a file name that was not
    UTF-8 turned back into its original bytes, so such names survive a store unchanged."""
    return key.encode("utf-8", "surrogateescape")


def checksum(key: str, label: int, width: int, height: int, data: bytes | memoryview) -> int:
    """CRC-32 of everything a record says: its key, label, size and encoded bytes.

    CRC-32 runs at several GB/s in zlib, so verifying every record costs far less than
    decoding it. It catches the bit rot and truncation a store can suffer on disk, in the
    image bytes and in the fields beside them: a label flipped on disk fails it as well.
    """
    raw_key = encode_key(key)
    crc = zlib.crc32(_FIELDS.pack(label, width, height, len(raw_key)))
    crc = zlib.crc32(raw_key, crc)
    return zlib.crc32(data, crc) & 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Record:
    """One image of a dataset, as stored.

    Attributes
    ----------
    key : str
        The image's path relative to the source root, with ``/`` separators
        (for example ``"n01440764/n01440764_10026.JPEG"``); unique within a store.
    label : int
        Class index into the store's class names; -1 for an unlabelled image.
    data : bytes
        The encoded image exactly as it came from the source (or as re-encoded on request).
    width, height : int
        Image size in pixels, from the header.
    checksum : int
        CRC-32 of all the fields above (see :func:`checksum`).
    """

    key: str
    label: int
    data: bytes
    width: int
    height: int
    checksum: int

    @classmethod
    def make(cls, key: str, label: int, data: bytes, width: int, height: int) -> Record:
        """Build a record, computing its checksum."""
        return cls(key, label, data, width, height, checksum(key, label, width, height, data))

    @property
    def nbytes(self) -> int:
        """Size of the encoded image in bytes."""
        return len(self.data)

    def verify(self) -> bool:
        """Whether the record still matches the stored checksum."""
        return checksum(self.key, self.label, self.width, self.height, self.data) == self.checksum

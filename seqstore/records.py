"""What one record of a store is."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = ["Record", "checksum"]


def checksum(data: bytes | memoryview) -> int:
    """CRC-32 of a record's encoded bytes.

    CRC-32 runs at several GB/s in zlib, so verifying every record costs far less than
    decoding it, and it catches the bit rot and truncation a store can suffer on disk.
    """
    return zlib.crc32(data) & 0xFFFFFFFF


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
        CRC-32 of ``data`` (see :func:`checksum`).
    """

    key: str
    label: int
    data: bytes
    width: int
    height: int
    checksum: int

    @classmethod
    def make(cls, key: str, label: int, data: bytes, width: int, height: int) -> Record:
        """Build a record, computing the checksum of ``data``."""
        return cls(key, label, data, width, height, checksum(data))

    @property
    def nbytes(self) -> int:
        """Size of the encoded image in bytes."""
        return len(self.data)

    def verify(self) -> bool:
        """Whether ``data`` still matches the stored checksum."""
        return checksum(self.data) == self.checksum

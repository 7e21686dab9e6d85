"""TFRecord framing and ``tf.train.Example`` records, read without TensorFlow or protobuf.

A TFRecord file is a run of records, each::

    uint64 length | uint32 masked CRC-32C of length | data | uint32 masked CRC-32C of data

all little-endian; the mask is ``((crc >> 15) | (crc << 17)) + 0xa282ead8``. The data of an
image dataset's record is a serialised ``tf.train.Example``: a map from feature names to a
list of bytes, floats or int64s. :func:`parse_example` reads the wire format of the three
messages involved (``Example``, ``Features`` with its map entries, ``Feature``) directly:
a bytes value is a contiguous slice of the record, so an image is found as an offset and a
length, and never copied to be found. CRC-32C comes from the ``crc32c`` package (hardware
CRC instructions where the CPU has them): in Python it would cost more than decoding.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = ["HEADER", "Feature", "masked_crc", "parse_example"]

HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_MASK = 0xA282EAD8


def masked_crc(data: bytes | bytearray | memoryview) -> int:
    """The masked CRC-32C of ``data``, as TFRecord frames store it."""
    import crc32c

    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK) & 0xFFFFFFFF


@dataclass
class Feature:
    """One feature of an Example: its kind and values.

    Attributes
    ----------
    kind : str
        ``"bytes"``, ``"float"`` or ``"int64"``.
    spans : list of (int, int)
        For bytes: each value's ``(start, stop)`` within the record.
    ints : list of int
        For int64: the values.
    """

    kind: str
    spans: list[tuple[int, int]] = field(default_factory=list)
    ints: list[int] = field(default_factory=list)


class _Malformed(ValueError):
    pass


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Malformed("a varint runs past its message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """The fields of the message ``data[start:end]``: ``(number, wire type, value or start,
    stop)``; for a varint the value and -1, for a length-delimited field its span."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(data, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            out.append((number, wire, value, -1))
        elif wire == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise _Malformed("a field runs past its message")
            out.append((number, wire, pos, pos + length))
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed(f"wire type {wire}")
    if pos != end:
        raise _Malformed("a field runs past its message")
    return out


def _feature(data: bytes, start: int, end: int) -> Feature:
    for number, wire, lo, hi in _fields(data, start, end):
        if wire != 2:
            continue
        if number == 1:
            return Feature(
                "bytes", spans=[(a, b) for n, w, a, b in _fields(data, lo, hi) if n == 1 and w == 2]
            )
        if number == 2:
            return Feature("float")
        if number == 3:
            ints: list[int] = []
            for n, w, a, b in _fields(data, lo, hi):
                if n != 1:
                    continue
                if w == 0:
                    ints.append(a - (1 << 64) if a >= 1 << 63 else a)
                elif w == 2:  # packed
                    pos = a
                    while pos < b:
                        value, pos = _varint(data, pos, b)
                        ints.append(value - (1 << 64) if value >= 1 << 63 else value)
            return Feature("int64", ints=ints)
    return Feature("bytes")


def parse_example(data: bytes) -> dict[str, Feature]:
    """The features of a serialised ``tf.train.Example``.

    Raises
    ------
    ValueError
        ``data`` is not one.
    """
    out: dict[str, Feature] = {}
    for number, wire, lo, hi in _fields(data, 0, len(data)):
        if number != 1 or wire != 2:  # Example.features
            continue
        for n, w, a, b in _fields(data, lo, hi):
            if n != 1 or w != 2:  # Features.feature: map entries
                continue
            name, value = "", Feature("bytes")
            for en, ew, ea, eb in _fields(data, a, b):
                if en == 1 and ew == 2:
                    name = data[ea:eb].decode("utf-8", "surrogateescape")
                elif en == 2 and ew == 2:
                    value = _feature(data, ea, eb)
            out[name] = value
    return out

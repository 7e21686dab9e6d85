"""The layout of an HDF5 store: the image bytes of all records in one flat dataset, sliced
by offsets.

Layout of ``data.h5`` inside a store directory::

    /images        uint8  (total_bytes,)   every record's encoded bytes, back to back
    /offsets       uint64 (n + 1,)         record i is images[offsets[i]:offsets[i + 1]]
    /keys          uint8  (key bytes,)     UTF-8 keys back to back
    /key_offsets   uint64 (n + 1,)
    /labels        int32  (n,)
    /widths        uint32 (n,)
    /heights       uint32 (n,)
    /checksums     uint32 (n,)            CRC-32 of each record (key, label, size, bytes)

The file's attributes ``seqstore_format`` and ``seqstore_format_version`` repeat the
manifest's. The manifest's ``index_digest`` is :func:`~seqstore.manifest.index_digest` of
the arrays ``offsets, key_offsets, labels, widths, heights, checksums``, in that order.

All datasets are chunked and resizable, so the writer appends in one pass without knowing
the count. A block of consecutive records is one contiguous slice of ``/images`` (one
sequential read), never one variable-length element per record. The per-record datasets
are the index whose digest the manifest keeps; each process checks it as it loads them.

libhdf5 does not survive a full disk: once a write fails for want of space, closing the file
(or the interpreter's exit) crashes the process. So the writer checks the free space before
every append and stops with one line while it still can.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import h5py
import numpy as np

from ...manifest import index_digest
from ...records import Record

__all__ = [
    "BYTES_CHUNK",
    "DATA_FILE",
    "DTYPES",
    "INDEX",
    "PER_RECORD",
    "ROWS_CHUNK",
    "chunk_table",
    "cut_records",
    "index_digest_of",
    "read_records",
    "read_slice",
    "within_chunks",
]

DATA_FILE = "data.h5"
BYTES_CHUNK = 1 << 20
ROWS_CHUNK = 1 << 14
PER_RECORD = ("labels", "widths", "heights", "checksums")
DTYPES = {"labels": np.int32, "widths": np.uint32, "heights": np.uint32, "checksums": np.uint32}
INDEX = ("offsets", "key_offsets", *PER_RECORD)


def index_digest_of(index: dict[str, np.ndarray]) -> str:
    """The manifest's ``index_digest`` of the index arrays (see the module docstring)."""
    return index_digest(*(np.ascontiguousarray(index[name]).tobytes() for name in INDEX))


def read_records(
    read: Callable[[str, int, int], bytes | memoryview],
    index: dict[str, np.ndarray],
    start: int,
    stop: int,
) -> list[Record]:
    """Records ``start`` to ``stop - 1``: two slice reads (``read(dataset, lo, hi)``), of the
    image bytes and of the keys, cut by the offsets of ``index``."""
    rows = {name: index[name][start : stop + 1 if "offsets" in name else stop] for name in INDEX}
    images = read("images", int(rows["offsets"][0]), int(rows["offsets"][-1]))
    keys = bytes(read("keys", int(rows["key_offsets"][0]), int(rows["key_offsets"][-1])))
    return cut_records(images, keys, rows)


def cut_records(
    images: bytes | memoryview, keys: bytes, rows: dict[str, np.ndarray]
) -> list[Record]:
    """The records of one block: its image bytes and key bytes, back to back, cut by the
    block's rows of the index (``offsets`` and ``key_offsets`` with one entry more than the
    records, and the per-record arrays)."""
    offsets = (rows["offsets"] - rows["offsets"][0]).tolist()
    key_offsets = (rows["key_offsets"] - rows["key_offsets"][0]).tolist()
    labels = rows["labels"].tolist()
    widths = rows["widths"].tolist()
    heights = rows["heights"].tolist()
    crcs = rows["checksums"].tolist()
    return [
        Record(
            keys[key_offsets[i] : key_offsets[i + 1]].decode("utf-8", "surrogateescape"),
            labels[i],
            bytes(images[offsets[i] : offsets[i + 1]]),
            widths[i],
            heights[i],
            crcs[i],
        )
        for i in range(len(labels))
    ]


def read_slice(dataset: h5py.Dataset, start: int, stop: int) -> bytes:
    """Elements ``start`` to ``stop - 1`` of a one-dimensional uint8 dataset, through
    libhdf5."""
    out = np.empty(stop - start, np.uint8)
    if stop > start:
        dataset.read_direct(out, np.s_[start:stop])
    return out.tobytes()


def within_chunks(
    chunk_offsets: list[int], first: int, size: int, start: int, stop: int
) -> list[tuple[int, int]]:
    """The file extents of bytes ``start`` to ``stop - 1`` of a one-dimensional uint8
    dataset in chunks of ``size``, whose chunks ``first``, ``first + 1`` ... lie at the file
    offsets ``chunk_offsets``: only each chunk's bytes in the range, since a block rarely
    begins or ends on a chunk boundary and whole chunks would read up to two chunks more."""
    extents = []
    for i, offset in enumerate(chunk_offsets, first):
        lo, hi = max(start, i * size), min(stop, (i + 1) * size)
        extents.append((offset + lo - i * size, hi - lo))
    return extents


def chunk_table(dataset: h5py.Dataset) -> tuple[int, np.ndarray] | None:
    """The chunk size of a one-dimensional dataset and the file offset of each of its
    chunks, in order; None when its chunks cannot be read as plain bytes (not chunked,
    filtered or compressed, or a chunk not allocated), so the caller reads through libhdf5.
    """
    if dataset.chunks is None or dataset.compression is not None:
        return None
    size = dataset.chunks[0]
    count = -(-dataset.shape[0] // size)
    offsets = np.full(count, -1, np.int64)
    plain = True

    def note(info: Any) -> None:
        nonlocal plain
        if info.filter_mask or info.size != size:
            plain = False
        else:
            offsets[info.chunk_offset[0] // size] = info.byte_offset

    if hasattr(dataset.id, "chunk_iter"):  # one pass over the chunk index (HDF5 >= 1.14)
        dataset.id.chunk_iter(note)
    else:
        for i in range(dataset.id.get_num_chunks()):
            note(dataset.id.get_chunk_info(i))
    if not plain or (offsets < 0).any():
        return None
    return size, offsets

"""Block reads in a few large reads: the byte-range layer and its use by LMDB and HDF5."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

import seqstore
from seqstore.backends.ranges import FileRanges, coalesce
from seqstore.convert import convert
from seqstore.errors import CorruptStoreError
from seqstore.testing import make_image_folder


def test_coalesce_joins_close_extents_and_sorts() -> None:
    assert coalesce([(100, 10), (0, 10), (15, 5), (500, 0)], gap=5) == [(0, 20), (100, 10)]
    assert coalesce([(0, 10), (30, 10)], gap=20) == [(0, 40)]
    assert coalesce([(0, 10), (5, 100)], gap=0) == [(0, 105)]


def test_read_extents_returns_each_extent_in_given_order(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    ranges = FileRanges(tmp_path / "f")
    extents = [(9000, 500), (10, 20), (40, 100), (5000, 1)]
    pieces = ranges.read_extents(extents, gap=64)
    assert [bytes(p) for p in pieces] == [data[o : o + n] for o, n in extents]
    # Empty extents, which no read covers, alone or among others.
    assert [bytes(p) for p in ranges.read_extents([(3, 0)])] == [b""]
    assert [bytes(p) for p in ranges.read_extents([(0, 0), (10, 5)])] == [b"", data[10:15]]


def test_read_past_the_end_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    with pytest.raises(CorruptStoreError, match="'.*f' ends at byte 100"):
        FileRanges(tmp_path / "f").read(50, 100)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ranges")
    src = make_image_folder(tmp / "images", classes=4, per_class=30, max_side=400)
    out = {}
    for fmt in ("lmdb", "hdf5"):
        out[fmt] = tmp / f"store.{fmt}"
        convert(src, out[fmt], format=fmt, progress=False)
    return out


def test_lmdb_block_is_read_with_one_large_read_first(
    stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    primed: list[tuple[int, int]] = []
    prime = FileRanges.prime

    def spy(self: FileRanges, offset: int, length: int) -> None:
        primed.append((offset, length))
        prime(self, offset, length)

    monkeypatch.setattr(FileRanges, "prime", spy)
    reader = seqstore.open(stores["lmdb"])
    records = reader.read_block(10, 50)
    assert [r.key for r in records] == [r.key for r in reader.read_block(10, 50)]
    assert all(r.verify() for r in records)
    # One extent per block, covering the records' bytes and not much more.
    assert len(primed) == 2
    offset, length = primed[0]
    size = sum(r.nbytes for r in records)
    assert size <= length <= 2 * size
    data = (stores["lmdb"] / "data.mdb").read_bytes()[offset : offset + length]
    assert records[0].data in data and records[-1].data in data


def test_hdf5_block_is_one_pread_not_one_read_per_chunk(
    stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[tuple[int, int]] = []
    read = FileRanges.read

    def spy(self: FileRanges, offset: int, length: int) -> Any:
        reads.append((offset, length))
        return read(self, offset, length)

    monkeypatch.setattr(FileRanges, "read", spy)
    reader = seqstore.open(stores["hdf5"])
    n = len(reader)
    records = reader.read_block(0, n)
    expected = seqstore.open(stores["lmdb"]).read_block(0, n)
    assert [(r.key, r.data, r.label) for r in records] == [
        (r.key, r.data, r.label) for r in expected
    ]
    # The whole store spans more than one 1 MB chunk: still one read for the images, one for keys.
    assert sum(r.nbytes for r in records) > 1 << 20
    assert len(reads) == 2

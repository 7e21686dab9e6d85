"""Block reads in a few large reads: the byte-range layer and its use by LMDB and HDF5."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import seqstore
import seqstore.backends.lmdb.reader as lmdb_reader
from seqstore.convert import convert
from seqstore.errors import CorruptStoreError
from seqstore.io.local import SMALL, LocalFile, direct_io_default
from seqstore.io.ranges import coalesce
from seqstore.testing import make_image_folder


def test_coalesce_joins_close_extents_and_sorts() -> None:
    assert coalesce([(100, 10), (0, 10), (15, 5), (500, 0)], gap=5) == [(0, 20), (100, 10)]
    assert coalesce([(0, 10), (30, 10)], gap=20) == [(0, 40)]
    assert coalesce([(0, 10), (5, 100)], gap=0) == [(0, 105)]


def test_read_extents_returns_each_extent_in_given_order(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    (tmp_path / "f").write_bytes(data)
    ranges = LocalFile(tmp_path / "f")
    extents = [(9000, 500), (10, 20), (40, 100), (5000, 1)]
    pieces = ranges.read_extents(extents, gap=64)
    assert [bytes(p) for p in pieces] == [data[o : o + n] for o, n in extents]
    # Empty extents, which no read covers, alone or among others.
    assert [bytes(p) for p in ranges.read_extents([(3, 0)])] == [b""]
    assert [bytes(p) for p in ranges.read_extents([(0, 0), (10, 5)])] == [b"", data[10:15]]


def test_read_past_the_end_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 100)
    with pytest.raises(CorruptStoreError, match="'.*f' ends at byte 100"):
        LocalFile(tmp_path / "f").read(50, 100)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ranges")
    src = make_image_folder(tmp / "images", classes=4, per_class=30, max_side=400)
    out = {}
    for fmt in ("lmdb", "hdf5"):
        out[fmt] = tmp / f"store.{fmt}"
        convert(src, out[fmt], format=fmt, progress=False)
    return out


@pytest.mark.skipif(sys.platform != "linux", reason="elsewhere blocks are read through the map")
def test_lmdb_block_is_one_pread_of_its_values_not_a_walk_of_the_map(
    stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _Spy(monkeypatch, "read").calls
    walked = []
    monkeypatch.setattr(
        "seqstore.backends.lmdb.reader.decode_record",
        lambda value, decode=lmdb_reader.decode_record: walked.append(type(value)) or decode(value),
    )
    reader = seqstore.open(stores["lmdb"])
    records = reader.read_block(10, 50)
    assert [r.key for r in records] == [r.key for r in reader.read_block(10, 50)]
    assert all(r.verify() for r in records)
    # The page tree's reads (the meta pages, then runs of branch and leaf pages, which it
    # keeps), then one read per block, covering the records' bytes and not much more; every
    # value cut from it (a view), none copied out of the map by a cursor.
    *pages, (offset, length), again = reads
    assert again == (offset, length) and 1 <= len(pages) <= 4
    assert all(at % 4096 == 0 and size % 4096 == 0 for at, size in pages)
    size = sum(r.nbytes for r in records)
    assert size <= length <= 2 * size
    data = (stores["lmdb"] / "data.mdb").read_bytes()[offset : offset + length]
    assert records[0].data in data and records[-1].data in data
    assert set(walked) == {memoryview} and len(walked) == 80


def test_hdf5_block_is_one_pread_not_one_read_per_chunk(
    stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = seqstore.open(stores["hdf5"])
    n = len(reader)
    expected = seqstore.open(stores["lmdb"]).read_block(0, n)
    reads = _Spy(monkeypatch, "read").calls
    records = reader.read_block(0, n)
    assert [(r.key, r.data, r.label) for r in records] == [
        (r.key, r.data, r.label) for r in expected
    ]
    # The whole store spans more than one 1 MB chunk: still one read for the images, one for keys.
    assert sum(r.nbytes for r in records) > 1 << 20
    assert len(reads) == 2


def test_hdf5_block_reads_its_own_bytes_not_whole_chunks(
    stores: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = seqstore.open(stores["hdf5"])
    n = len(reader)
    expected = seqstore.open(stores["lmdb"]).read_block(n // 3, 2 * n // 3)
    reads = _Spy(monkeypatch, "read").calls
    records = reader.read_block(n // 3, 2 * n // 3)
    assert records == expected
    # A block in the middle of the store begins and ends inside 1 MB chunks: the images
    # read are the block's bytes, not the chunks around them.
    images, keys = reads
    assert images[1] == sum(len(r.data) for r in records)
    assert keys[1] == sum(len(r.key.encode()) for r in records)


# -- direct reads ---------------------------------------------------------------------------

needs_linux = pytest.mark.skipif(sys.platform != "linux", reason="O_DIRECT and mincore are Linux's")


def _evict(*files: Path) -> None:
    """Drop ``files`` from the page cache, or skip where the file system keeps files in
    memory (tmpfs), where nothing can be read uncached."""
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        if LocalFile(file).cached(0, file.stat().st_size):
            pytest.skip(f"the file system of '{file}' keeps it in memory")


def _takes_o_direct(file: Path) -> bool:
    try:
        os.close(os.open(file, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        return False
    return True


class _Spy:
    """Counts the calls of a LocalFile method and the ranges they read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        self.calls: list[tuple[int, int]] = []
        method = getattr(LocalFile, name)

        def spy(ranges: LocalFile, offset: int, length: int) -> Any:
            self.calls.append((offset, length))
            return method(ranges, offset, length)

        monkeypatch.setattr(LocalFile, name, spy)


@needs_linux
def test_direct_reads_uncached_bytes_around_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3 << 20)
    file = tmp_path / "f"
    file.write_bytes(data)
    _evict(file)
    uncached = _Spy(monkeypatch, "read_uncached")
    ranges = LocalFile(file, direct=True)
    assert not ranges.cached(1000, 1 << 20)
    # Unaligned on both ends, and the tail of the file.
    tail = SMALL + 77
    assert bytes(ranges.read_run(1000, 1 << 20)) == data[1000 : 1000 + (1 << 20)]
    assert bytes(ranges.read_run(len(data) - tail, tail)) == data[-tail:]
    assert uncached.calls == [(1000, 1 << 20), (len(data) - tail, tail)]
    if _takes_o_direct(file):
        assert not ranges.cached(1000, 1 << 20), "the direct read filled the page cache"
    with pytest.raises(CorruptStoreError, match="ends at byte"):
        ranges.read_uncached(len(data) - 77, 78)
    # A small run is read through the cache, and so is what is cached.
    assert bytes(ranges.read_run(2 << 20, SMALL)) == data[2 << 20 : (2 << 20) + SMALL]
    assert ranges.cached(2 << 20, SMALL)
    ranges.read(0, len(data))
    assert ranges.cached(0, len(data))
    assert bytes(ranges.read_run(5, 1 << 20)) == data[5 : 5 + (1 << 20)]
    assert len(uncached.calls) == 3
    # Without direct, never around the cache.
    _evict(file)
    assert bytes(LocalFile(file).read_run(1000, 10)) == data[1000:1010]
    assert len(uncached.calls) == 3


@pytest.fixture(scope="module")
def mixed_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores of photos of 200 to 500 px with a few 8 px ones among them, whose values are
    small enough for an LMDB leaf."""
    tmp = tmp_path_factory.mktemp("direct")
    src = make_image_folder(tmp / "images", classes=3, per_class=30, min_side=200, max_side=500)
    for k, folder in enumerate(sorted(p for p in src.iterdir() if p.is_dir())):
        Image.new("RGB", (8, 8), (40 * k, 90, 200)).save(folder / "tiny.jpg", quality=90)
    out = {}
    for fmt in ("lmdb", "hdf5"):
        out[fmt] = tmp / f"store.{fmt}"
        convert(src, out[fmt], format=fmt, progress=False)
    return out


@needs_linux
@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_direct_io_reads_an_uncached_block_in_one_read_and_a_cached_one_from_the_cache(
    mixed_stores: dict[str, Path], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = mixed_stores[fmt]
    data = store / {"lmdb": "data.mdb", "hdf5": "data.h5"}[fmt]
    expected = seqstore.open(store, direct_io=False).read_block(0, len(seqstore.open(store)))
    reader = seqstore.open(store, direct_io=True)
    n = len(reader)
    reader.labels()  # what a loader reads at open, before its blocks
    _evict(data)
    uncached, primed = _Spy(monkeypatch, "read_uncached"), _Spy(monkeypatch, "prime")
    cuts = [n * k // 3 for k in range(4)]
    blocks = list(zip(cuts[:-1], cuts[1:], strict=True))
    # Each block more than SMALL bytes, which are read through the cache.
    assert all(sum(r.nbytes for r in expected[lo:hi]) > SMALL for lo, hi in blocks)
    records = [r for lo, hi in reversed(blocks) for r in reader.read_block(lo, hi)]
    got = sorted(records, key=lambda r: r.key)
    assert got == sorted(expected, key=lambda r: r.key)
    assert all(r.verify() for r in records)
    # LMDB's small values live in its leaves, and are read from there.
    if fmt == "lmdb":
        assert sum(r.nbytes < 1000 for r in records) == 3
    # One read around the cache per block (HDF5's keys are a small run, read through it).
    assert len(uncached.calls) == len(blocks)
    assert primed.calls == []
    if _takes_o_direct(data):
        assert not any(LocalFile(data).cached(*call) for call in uncached.calls)
    # Cached: no read around the cache.
    with data.open("rb") as f:
        f.read()
    assert reader.read_block(0, n) == expected
    assert len(uncached.calls) == len(blocks)


def test_direct_io_default_is_for_stores_larger_than_memory() -> None:
    assert not direct_io_default(1 << 30)
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert direct_io_default(memory + 1) == (sys.platform == "linux")


def test_sharded_store_decides_direct_io_by_its_whole_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make_image_folder(tmp_path / "images", classes=2, per_class=20, max_side=200)
    store = tmp_path / "store.lmdb"
    convert(src, store, format="lmdb", shard_mb=0.1, progress=False)
    asked: list[int] = []

    def default(size: int) -> bool:
        asked.append(size)
        return True

    monkeypatch.setattr("seqstore.backends.sharded.reader.direct_io_default", default)
    reader = seqstore.open(store)
    assert len(reader.manifest.shards or []) > 1
    records = reader.read_block(0, len(reader))
    assert all(r.verify() for r in records)
    assert set(asked) == {reader.manifest.total_bytes}
    shards = _shard_readers(reader)
    assert shards and all(s.data.direct for s in shards)
    # Told, it is not overridden.
    assert not any(s.data.direct for s in _shard_readers(seqstore.open(store, direct_io=False)))


def _shard_readers(reader: Any) -> list[Any]:
    reader.read_block(0, len(reader))
    return list(reader._readers.values())


@needs_linux
def test_direct_io_on_lmdb_leaves_pointing_past_the_file_fails_cleanly(
    mixed_stores: dict[str, Path], tmp_path: Path
) -> None:
    """Leaf pages whose values' overflow page numbers are garbage: the direct path must not
    read outside the map (a crash); the read fails with one seqstore error."""
    store = tmp_path / "store.lmdb"
    shutil.copytree(mixed_stores["lmdb"], store)
    data = bytearray((store / "data.mdb").read_bytes())
    psize = struct.unpack_from("<I", data, 40)[0]
    damaged = 0
    for page in range(2, len(data) // psize):
        base = page * psize
        if struct.unpack_from("<H", data, base + 10)[0] != 0x02:  # not a leaf
            continue
        lower = struct.unpack_from("<H", data, base + 12)[0]
        for i in range((lower - 16) // 2):
            node = base + struct.unpack_from("<H", data, base + 16 + 2 * i)[0]
            flags, key_size = struct.unpack_from("<HH", data, node + 4)
            if flags & 0x01 and key_size == 8:  # a record's value on overflow pages
                data[node + 16 : node + 24] = (1 << 40).to_bytes(8, "little")
                damaged += 1
    assert damaged
    (store / "data.mdb").write_bytes(bytes(data))
    _evict(store / "data.mdb")
    script = f"""
import seqstore
from seqstore.errors import CorruptStoreError
reader = seqstore.open({str(store)!r}, direct_io=True)
try:
    reader.read_block(0, len(reader))
except CorruptStoreError as exc:
    print("error:", exc)
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith("error: ") and "re-create it with seqstore convert" in p.stdout


def test_lmdb_page_parser_refuses_what_points_outside_the_file_or_its_page() -> None:
    from seqstore.backends.lmdb.pages import PageTree

    def _Tree(data: memoryview, psize: int) -> PageTree:  # noqa: N802 - as the local reader makes it
        metas = [struct.unpack_from("<QQQ", data, page * psize + 128) for page in (0, 1)]
        root, last, _ = max(metas, key=lambda meta: meta[2])
        return PageTree(
            lambda pgno: bytes(data[pgno * psize : (pgno + 1) * psize]),
            psize,
            root,
            min(len(data) // psize, last + 1),
        )

    psize = 4096
    pages = bytearray(psize * 4)

    def meta(root: int, last: int) -> None:  # both meta pages; the second is the newer
        for page in (0, 1):
            struct.pack_into("<QQQ", pages, page * psize + 128, root, last, page + 1)

    meta(2, 3)
    struct.pack_into("<QHHHH", pages, 2 * psize, 2, 0, 0x02, 16 + 2 * 3, psize)  # a leaf
    struct.pack_into("<3H", pages, 2 * psize + 16, 4000, 4090, 65535)  # nodes outside it
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) is None
    struct.pack_into("<3H", pages, 2 * psize + 16, 100, 200, 300)  # three empty-keyed nodes
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) == [(b"", b"")] * 3
    # A leaf whose value is on overflow pages past the file.
    struct.pack_into("<HHHH8sQ", pages, 2 * psize + 100, 8, 0, 0x01, 8, b"\0" * 8, 1 << 40)
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) is None
    # A root past the file, or past the last page the meta page names.
    meta(1 << 40, 3)
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) is None
    meta(3, 2)
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) is None
    # A branch whose child is a page that is not the one it says it is.
    meta(3, 3)
    struct.pack_into("<QHHHH", pages, 3 * psize, 3, 0, 0x01, 16 + 2, psize)
    struct.pack_into("<H", pages, 3 * psize + 16, 200)
    struct.pack_into("<HHHH", pages, 3 * psize + 200, 2, 0, 0, 0)  # child: page 2
    struct.pack_into("<QHHHH", pages, 2 * psize, 2, 0, 0x02, 16 + 2 * 3, psize)
    struct.pack_into("<3H", pages, 2 * psize + 16, 300, 300, 300)
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) == [(b"", b"")] * 3
    struct.pack_into("<Q", pages, 2 * psize, 9)  # page 2 says it is page 9
    assert _Tree(memoryview(bytes(pages)), psize).leaf(b"\0" * 8) is None

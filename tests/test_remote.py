"""Stores in object storage: a real S3-compatible server on 127.0.0.1 (see conftest's
``s3_server``), real stores uploaded to it, real loader worker processes."""

from __future__ import annotations

import itertools
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import seqstore
from seqstore import Loader
from seqstore.backends.hdf5 import HDF5Reader, HDF5Writer
from seqstore.backends.lmdb import LMDBReader
from seqstore.backends.sharded import ShardedReader
from seqstore.cli import main
from seqstore.convert import convert
from seqstore.errors import (
    ConfigError,
    CorruptStoreError,
    NotAStoreError,
    PartialStoreError,
    RemoteError,
    StoreExistsError,
)
from seqstore.io import cache as cache_module
from seqstore.io import presigned
from seqstore.io.cache import ShardCache
from seqstore.io.cached import CachedFile
from seqstore.io.object import ObjectStore
from seqstore.io.retry import RetryPolicy
from seqstore.manifest import MANIFEST_NAME, read_manifest, write_manifest
from seqstore.records import Record
from seqstore.testing import collect_epoch, make_image_folder
from seqstore.testing.s3server import S3Server
from seqstore.upload import staging_path, upload_store

N = 90
_prefixes = itertools.count()


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("remote")
    images = make_image_folder(root / "images", classes=6, per_class=N // 6, max_side=96)
    out = {"images": images}
    for fmt in ("hdf5", "lmdb"):
        # Small write batches: the images dataset grows in several appends, as a big store's.
        convert(images, root / fmt, format=fmt, progress=False)
        out[fmt] = root / fmt
    return out


@pytest.fixture(scope="module")
def module_bucket(s3_server: S3Server) -> str:
    name = f"test-remote-{time.monotonic_ns() % 10**8}"
    s3_server.make_bucket(name)
    return name


@pytest.fixture
def bucket(module_bucket: str) -> str:
    """A place of this test's own: a prefix in the module's bucket (SeaweedFS takes
    seconds to set up each new bucket)."""
    return f"{module_bucket}/t{next(_prefixes)}"


def _upload(s3_server: S3Server, local: Path, url: str) -> str:
    upload_store(local, ObjectStore(url, s3_server.storage_options()), overwrite=False)
    return url


def _opts(**extra: Any) -> dict[str, Any]:
    return dict(batch_size=8, image_size=32, shuffle_buffer=24, block_mb=0.05) | extra


def test_open_reads_what_the_local_store_holds(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    local = seqstore.open(stores["hdf5"])
    remote = seqstore.open(url, storage_options=s3_server.storage_options())
    assert len(remote) == len(local) == N
    assert remote.classes == local.classes and remote.identity == local.identity
    for start, stop in [(0, 1), (0, N), (17, 53), (N - 1, N), (5, 5)]:
        assert remote.read_block(start, stop) == local.read_block(start, stop)
    assert remote.read(-1) == local.read(N - 1)
    assert np.array_equal(remote.labels(), local.labels())
    remote.check_index()
    with pytest.raises(IndexError):
        remote.read_block(0, N + 1)


def test_a_block_is_one_ranged_get(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    # 200 records of 40 KB: 8 MB of images in chunks of 1 MiB, appended 1 MB at a time.
    rng = np.random.default_rng(0)
    records = [Record.make(f"k{i:04d}", i % 3, rng.bytes(40_000), 8, 8) for i in range(200)]
    with HDF5Writer(tmp_path / "big", classes=["a", "b", "c"], batch_bytes=1 << 20) as w:
        for r in records:
            w.write(r)
    url = _upload(s3_server, tmp_path / "big", f"s3://{bucket}/big.h5")
    reader = seqstore.open(url, storage_options=s3_server.storage_options())
    assert isinstance(reader, HDF5Reader)
    reader.labels()  # the whole index
    assert reader.read_block(150, 200) == records[150:200]  # the keys are fetched with it
    remote = reader.place.store  # type: ignore[attr-defined]
    gets = remote.gets
    asked: list[int] = []
    cat = remote.cat

    def spy(url: str, start: int | None = None, end: int | None = None) -> Any:
        asked.append((end or 0) - (start or 0))
        return cat(url, start, end)

    remote.cat = spy
    # 4 MB over 5 chunks, with the index's chunks between the first two: one ranged GET,
    # of the block's bytes and what lies between its chunks, not of its chunks whole (the
    # block starts 800 KB into its first one).
    assert reader.read_block(20, 120) == records[20:120]
    assert remote.gets == gets + 1
    assert len(asked) == 1 and asked[0] < 100 * 40_000 + 300_000


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_over_s3_yields_the_batches_of_local_disk(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, workers: int
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    opts = _opts(num_workers=workers, with_indices=True, seed=5)
    li, ll, lx = collect_epoch(Loader(stores["hdf5"], **opts))
    remote = Loader(url, storage_options=s3_server.storage_options(), **opts)
    ri, rl, rx = collect_epoch(remote)
    assert ri == li and rl == ll and sorted(ri) == list(range(N))
    assert all(torch.equal(a, b) for a, b in zip(lx, rx, strict=True))
    assert remote.state_dict()["store_path"] == url


def test_credentials_and_endpoint_from_the_environment(
    s3_server: S3Server,
    stores: dict[str, Path],
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _upload(s3_server, stores["hdf5"], f"s3://{bucket}/data/val.h5")
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    # A dataset root at a URL: split= finds the store under it.
    loader = Loader(f"s3://{bucket}/data", split="val", **_opts(with_indices=True))
    indices, _, _ = collect_epoch(loader)
    assert indices == list(range(N))  # val: storage order
    assert loader.where == f"s3://{bucket}/data/val.h5"


def test_http_url(s3_server: S3Server, stores: dict[str, Path], bucket: str) -> None:
    if s3_server.http_root is None:
        pytest.skip(f"{s3_server.kind} serves no plain HTTP")
    pytest.importorskip("aiohttp")
    _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    reader = seqstore.open(f"{s3_server.http_root}/{bucket}/train.h5")
    assert reader.read_block(10, 40) == seqstore.open(stores["hdf5"]).read_block(10, 40)
    # Opening asked fsspec for the object's size (the direct path does not, over plain
    # HTTP); the blocks still came straight over HTTP.
    assert reader.place.store._presigned is not None  # type: ignore[attr-defined]


def test_cache_holds_whole_files_and_evicts_the_least_recently_used(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, tmp_path: Path
) -> None:
    urls = [_upload(s3_server, stores["hdf5"], f"s3://{bucket}/s{i}.h5") for i in range(3)]
    size = (stores["hdf5"] / "data.h5").stat().st_size
    cache_dir = tmp_path / "cache"
    limit_gb = 2.5 * size / 1e9  # two copies fit, not three
    local = seqstore.open(stores["hdf5"])
    readers = []
    for url in urls:
        reader = seqstore.open(
            url,
            storage_options=s3_server.storage_options(),
            cache_dir=cache_dir,
            cache_limit_gb=limit_gb,
        )
        assert reader.read_block(0, 10) == local.read_block(0, 10)  # at once, remotely
        deadline = time.monotonic() + 30
        while reader.reading_from.startswith("s3://"):  # until the copy is in the cache
            assert time.monotonic() < deadline, "the cache was not filled"
            time.sleep(0.1)
        assert reader.read_block(0, N) == local.read_block(0, N)  # from the copy
        assert reader.state.io is None  # h5py reads the copy by path, as a local file
        readers.append(reader)
        time.sleep(0.05)  # distinct use times
    cache = ShardCache(cache_dir, int(limit_gb * 1e9))
    names = [p.name for p in cache.entries()]
    assert len(names) == 2 and readers[0].data.key not in names  # the oldest went
    assert [readers[1].data.key, readers[2].data.key] == names
    assert cache.total_bytes() <= limit_gb * 1e9
    assert not list((cache_dir / "tmp").iterdir())  # nothing half-downloaded left
    # The reader whose copy was evicted keeps reading it: its file is open.
    assert readers[0].read_block(40, 80) == local.read_block(40, 80)
    cache.touch(readers[1].data.key)  # used: now the next victim is readers[2]'s copy
    again = seqstore.open(
        urls[0],
        storage_options=s3_server.storage_options(),
        cache_dir=cache_dir,
        cache_limit_gb=limit_gb,
    )
    again.read_block(0, 1)
    deadline = time.monotonic() + 30
    while again.reading_from.startswith("s3://"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert [p.name for p in cache.entries()] == [readers[1].data.key, readers[0].data.key]


def test_two_threads_filling_one_cache_entry_download_it_once(tmp_path: Path) -> None:
    # File locks do not exclude the threads of one process: a reader's read-ahead thread
    # and its main thread may both ask for the same shard.
    cache = ShardCache(tmp_path / "cache", None)
    calls: list[int] = []
    started = threading.Event()

    def download(directory: Path) -> None:
        calls.append(1)
        started.set()
        time.sleep(0.3)  # the other thread asks meanwhile
        (directory / "data").write_bytes(b"x" * 100)

    results: list[Path | None] = []
    first = threading.Thread(target=lambda: results.append(cache.fill("k", 100, download)))
    first.start()
    started.wait(5)
    results.append(cache.fill("k", 100, download))
    first.join()
    assert calls == [1]
    assert results == [cache.path("k")] * 2
    assert (cache.path("k") / "data").read_bytes() == b"x" * 100


def test_failed_background_download_warns_and_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = ShardCache(tmp_path, None)
    failures = [ConnectionError("server went away")]

    def download(directory: Path) -> None:
        if failures:
            raise failures.pop()
        (directory / "data").write_bytes(b"x" * 10)

    def until_done() -> None:
        for thread in threading.enumerate():
            if thread.name.startswith("seqstore-cache-"):
                thread.join(10)

    with pytest.warns(RuntimeWarning, match=r"could not copy 's3://b/d.h5'.*server went away"):
        assert cache.fill_in_background("k", 10, download, what="s3://b/d.h5")
        until_done()
    assert not cache.entries() and not list((tmp_path / "tmp").iterdir())
    assert not cache.fill_in_background("k", 10, download, what="s3://b/d.h5")  # not yet
    monkeypatch.setattr(cache_module, "RETRY_S", 0.0)
    assert cache.fill_in_background("k", 10, download, what="s3://b/d.h5")
    until_done()
    assert [p.name for p in cache.entries()] == ["k"]
    assert not cache.fill_in_background("k", 10, download, what="s3://b/d.h5")  # cached


def test_reader_tries_a_failed_copy_again(
    s3_server: S3Server,
    stores: dict[str, Path],
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/flaky.h5")
    monkeypatch.setattr(cache_module, "RETRY_S", 0.2)
    download = CachedFile._download
    failures = [ConnectionError("connection reset")]

    def flaky(self: CachedFile, directory: Path) -> None:
        if failures:
            raise failures.pop()
        download(self, directory)

    monkeypatch.setattr(CachedFile, "_download", flaky)
    local = seqstore.open(stores["hdf5"])
    reader = seqstore.open(url, storage_options=s3_server.storage_options(), cache_dir=tmp_path)
    deadline = time.monotonic() + 30
    with pytest.warns(RuntimeWarning, match="connection reset"):
        while reader.reading_from.startswith("s3://"):  # until the second try has copied it
            assert time.monotonic() < deadline, "the failed copy was not tried again"
            assert reader.read_block(0, 10) == local.read_block(0, 10)
            time.sleep(0.1)
    assert not failures
    assert reader.read_block(0, N) == local.read_block(0, N)


def test_cache_shared_by_worker_processes(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, tmp_path: Path
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    opts = _opts(num_workers=2, with_indices=True, seed=1)
    expected = collect_epoch(Loader(stores["hdf5"], **opts))[0]
    loader = Loader(url, storage_options=s3_server.storage_options(), cache_dir=tmp_path, **opts)
    cache = ShardCache(tmp_path, None)
    deadline = time.monotonic() + 30
    epochs = 0
    # The first epoch starts the download in the background; the epochs meanwhile read
    # remotely.
    while epochs < 3 or not cache.entries():
        assert time.monotonic() < deadline, "the cache was not filled"
        loader.set_epoch(0)
        assert collect_epoch(loader)[0] == expected, epochs
        epochs += 1
    # The workers look for the copy every half second: the next epoch reads it.
    time.sleep(0.6)
    loader.set_epoch(0)
    assert collect_epoch(loader)[0] == expected
    entries = cache.entries()
    assert len(entries) == 1  # two workers, one download
    data = (entries[0] / "data.h5").read_bytes()
    assert data == (stores["hdf5"] / "data.h5").read_bytes()
    assert not list((tmp_path / "tmp").iterdir())


def test_server_restarted_mid_epoch_costs_retries_not_the_epoch(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    if s3_server.kind != "seaweedfs":
        pytest.skip("moto loses its objects when it restarts")
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    opts = _opts(with_indices=True, seed=2, block_mb=0.02)
    expected = collect_epoch(Loader(stores["hdf5"], **opts))
    loader = Loader(url, storage_options=s3_server.storage_options(), **opts)
    got: tuple[list[int], list[int], list[Any]] = ([], [], [])
    for n, (x, y, i) in enumerate(loader):
        got[0].extend(i.tolist())
        got[1].extend(y.tolist())
        got[2].append(x)
        if n == 2:
            s3_server.stop()
            # Back after the next blocks' requests have met a closed port.
            threading.Timer(1.5, s3_server.start).start()
    assert got[0] == expected[0] and got[1] == expected[1]
    assert all(torch.equal(a, b) for a, b in zip(got[2], expected[2], strict=True))
    assert loader.reader.place.store.retried > 0  # type: ignore[attr-defined]


def test_server_restart_under_worker_processes(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    if s3_server.kind != "seaweedfs":
        pytest.skip("moto loses its objects when it restarts")
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    opts = _opts(with_indices=True, seed=3, block_mb=0.02, num_workers=2, prefetch_factor=1)
    expected = collect_epoch(Loader(stores["hdf5"], **opts))[0]
    got = []
    for n, (_x, _y, i) in enumerate(
        Loader(url, storage_options=s3_server.storage_options(), **opts)
    ):
        got += i.tolist()
        if n == 1:
            s3_server.restart()
    assert got == expected


def test_permanent_errors_are_one_line(
    s3_server: S3Server,
    stores: dict[str, Path],
    bucket: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    opts = s3_server.storage_options()
    started = time.monotonic()
    with pytest.raises(RemoteError, match="no such bucket 'no-such-bucket'"):
        seqstore.open("s3://no-such-bucket/train.h5", storage_options=opts)
    with pytest.raises(NotAStoreError, match="does not exist or is not a seqstore store"):
        seqstore.open(f"s3://{bucket}/missing.h5", storage_options=opts)
    if s3_server.kind == "seaweedfs":  # moto takes any key
        wrong = s3_server.storage_options(secret="not-the-secret")
        with pytest.raises(RemoteError, match="access denied.*check the credentials"):
            seqstore.open(url, storage_options=wrong)
    # Refused at once, not retried: retrying each of these to the default policy's end
    # would wait about 48 s apiece. (Not tighter: a server just restarted by the tests
    # before can take seconds to answer, and CI machines are loaded.)
    assert time.monotonic() - started < 30
    assert main(["info", "s3://no-such-bucket/x.h5"]) == 2  # no credentials: refused too
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqstore: error: ") and "\n" not in err


def test_unreachable_server_fails_after_the_retries() -> None:
    pytest.importorskip("s3fs")
    options = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    with pytest.raises(RemoteError, match="failed 3 times .* is up and reachable") as info:
        seqstore.open(
            "s3://bucket/train.h5",
            storage_options=options,
            retry=RetryPolicy(attempts=3, base_s=0.01),
        )
    assert "\n" not in str(info.value)


def test_incomplete_and_replaced_stores_are_refused(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    opts = s3_server.storage_options()
    fs = s3_server.filesystem()
    fs.put_file(str(stores["hdf5"] / "data.h5"), f"{bucket}/half.h5/data.h5")
    with pytest.raises(PartialStoreError, match="an upload that did not finish"):
        seqstore.open(f"s3://{bucket}/half.h5", storage_options=opts)
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/cut.h5")
    fs.pipe_file(f"{bucket}/cut.h5/data.h5", (stores["hdf5"] / "data.h5").read_bytes()[:-10])
    with pytest.raises(CorruptStoreError, match="not the .* its manifest records"):
        seqstore.open(url, storage_options=opts)


def test_a_reader_looks_its_data_file_up_once_and_again_when_it_reopens(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    looked_up: list[str] = []
    info = ObjectStore.info
    monkeypatch.setattr(ObjectStore, "info", lambda self, u: looked_up.append(u) or info(self, u))
    reader = seqstore.open(url, storage_options=s3_server.storage_options())
    reader.read_block(0, 5)
    assert [u for u in looked_up if u.endswith("data.h5")] == [f"{url}/data.h5"]
    # Replaced meanwhile, at the same size: a reopened reader asks again, and refuses it.
    reader.close()
    data = bytearray((stores["hdf5"] / "data.h5").read_bytes())
    data[-1] ^= 0xFF
    s3_server.filesystem().pipe_file(f"{bucket}/train.h5/data.h5", bytes(data))
    with pytest.raises(CorruptStoreError, match="replaced after this reader opened it"):
        reader.read_block(0, 5)


@pytest.mark.parametrize("where", ["local", "local sharded", "s3"])
def test_a_store_of_another_layout_version_is_refused(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, tmp_path: Path, where: str
) -> None:
    store = tmp_path / "store"
    if where == "local sharded":
        convert(stores["images"], store, format="hdf5", shard_mb=0.05, progress=False)
    else:
        shutil.copytree(stores["hdf5"], store)
    manifest = read_manifest(store)
    write_manifest(store, manifest.model_copy(update={"format_version": 99}))
    options: dict[str, Any] = {}
    location = str(store)
    if where == "s3":
        location = _upload(s3_server, store, f"s3://{bucket}/new.h5")
        options = {"storage_options": s3_server.storage_options()}
    with pytest.raises(NotAStoreError, match="hdf5 layout version 99 .* reads version 2"):
        seqstore.open(location, **options)


def test_lmdb_reads_in_place_with_ranged_gets_or_through_the_cache(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, tmp_path: Path
) -> None:
    url = _upload(s3_server, stores["lmdb"], f"s3://{bucket}/train.lmdb")
    opts = s3_server.storage_options()
    local = seqstore.open(stores["lmdb"])
    li = collect_epoch(Loader(stores["lmdb"], **_opts(num_workers=2, with_indices=True)))[0]
    # No cache: the page parser finds each block's values, read by ranged GETs.
    reader = seqstore.open(url, storage_options=opts)
    assert isinstance(reader, LMDBReader) and reader.reading_from == f"{url}/data.mdb"
    store = reader.place.store
    reader.labels()
    gets = store.gets
    assert reader.read_block(0, N) == local.read_block(0, N)
    assert store.gets - gets < 10  # the leaf pages and one run of values, not a GET per record
    assert np.array_equal(reader.labels(), local.labels())
    reader.check_index()
    loader = Loader(url, storage_options=opts, **_opts(num_workers=2, with_indices=True))
    assert collect_epoch(loader)[0] == li
    # A cache too small for the store: every read stays remote.
    small = seqstore.open(url, storage_options=opts, cache_dir=tmp_path, cache_limit_gb=1e-6)
    assert small.read_block(0, N) == local.read_block(0, N)
    assert small.reading_from.startswith("s3://")  # type: ignore[attr-defined]
    # With a cache, the copy is read as a local file once it is there.
    cached = seqstore.open(url, storage_options=opts, cache_dir=tmp_path)
    deadline = time.monotonic() + 60
    while cached.reading_from.startswith("s3://"):  # type: ignore[attr-defined]
        assert cached.read_block(0, N) == local.read_block(0, N)
        assert time.monotonic() < deadline, "the copy never came"
        time.sleep(0.1)
    assert cached.read_block(0, N) == local.read_block(0, N)
    loader = Loader(
        url, storage_options=opts, cache_dir=tmp_path, **_opts(num_workers=2, with_indices=True)
    )
    assert collect_epoch(loader)[0] == li


def test_local_paths_take_no_storage_options(stores: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="apply to stores at a URL"):
        seqstore.open(stores["hdf5"], cache_dir="/tmp/x")


def test_an_option_the_remote_reader_does_not_take_is_one_line(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    with pytest.raises(ConfigError, match=r"the hdf5 reader of '.*' takes no option 'labels'"):
        seqstore.open(url, storage_options=s3_server.storage_options(), labels="x.txt")


def test_convert_uploads_a_whole_store(
    s3_server: S3Server,
    stores: dict[str, Path],
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the store is staged by default
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again (and after the test)
    url = f"s3://{bucket}/train.h5"
    # As the README shows it: credentials and endpoint from the environment.
    assert main(["convert", str(stores["images"]), url, "--format", "hdf5"]) == 0
    assert f"to {url} as hdf5" in capsys.readouterr().out
    assert not list((tmp_path / "seqstore-upload").iterdir())  # the local copy is gone
    assert main(["info", url]) == 0
    assert "format: hdf5" in capsys.readouterr().out
    remote = seqstore.open(url)
    local = seqstore.open(stores["hdf5"])  # the same source, converted locally
    assert remote.read_block(0, N) == local.read_block(0, N)
    assert "storage_options" not in remote.manifest.provenance.options
    staging = tmp_path / "elsewhere"
    argv = ["convert", str(stores["images"]), url, "--format", "hdf5", "-q"]
    argv += ["--staging-dir", str(staging)]
    assert main(argv) == 2  # a store is there
    assert "already holds a store" in capsys.readouterr().err
    first = remote.identity
    assert main([*argv, "--overwrite"]) == 0
    assert not list((staging / "seqstore-upload").iterdir())
    assert seqstore.open(url).identity != first
    with pytest.raises(StoreExistsError):
        convert(stores["images"], url, format="hdf5", progress=False)


def test_bench_reads_the_store_over_s3_too(s3_server: S3Server, tmp_path: Path) -> None:
    from seqstore.bench import run_bench

    src = make_image_folder(tmp_path / "src", classes=3, per_class=10, max_side=64)
    result = run_bench(
        src=src,
        formats=["hdf5"],
        workers=1,
        batch_size=16,
        image_size=32,
        repeat=1,
        min_seconds=0,
        baselines=False,
        out=tmp_path / "out",
    )
    rows = {row.name: row for row in result.rows}
    s3 = rows["hdf5 over s3"]
    assert s3.images_per_s > 0 and 0 < s3.first_batch_s < 60
    assert any("hdf5 over s3: the hdf5 store from a" in note for note in result.notes)


def test_s3_benchmark_runs_as_the_readme_shows(s3_server: S3Server, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    src = make_image_folder(tmp_path / "src", classes=4, per_class=10)
    p = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "s3.py"), str(src), "--repeat", "1"]
        + ["--epochs", "2", "--scale", "2", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(seqstore.__file__).parents[1])},
        timeout=300,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    for line in (
        "local disk",
        "s3, no cache",
        "s3, cache_dir",
        "s3, no cache, small store",
        "first epoch, s3 uncached / local disk:",
        "cached epochs, s3 / local disk:",
        "first batch from s3:",
    ):
        assert line in p.stdout, line


SHARD_MB = 0.05  # 25 of the 90 records a shard: 4 shards


@pytest.fixture(scope="module")
def sharded(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The images as a sharded HDF5 store on local disk, written as the upload below is."""
    dst = tmp_path_factory.mktemp("sharded") / "train"
    convert(stores["images"], dst, format="hdf5", shard_mb=SHARD_MB, workers=2, progress=False)
    return dst


def test_sharded_convert_to_s3_uploads_shards_as_they_finish_and_reads_back(
    s3_server: S3Server,
    stores: dict[str, Path],
    sharded: Path,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    url = f"s3://{bucket}/train"
    staging = tmp_path / "staging"
    local_top = staging_path(url, staging) / MANIFEST_NAME
    puts: list[tuple[str, bool]] = []  # the name uploaded, and whether the store was finished
    seen_partial = []
    put_file = ObjectStore.put_file

    def logged(self: ObjectStore, local: Any, target: str) -> None:
        name = target[len(url) + 1 :]
        # Nothing readable at the URL until the store's manifest is up.
        if not puts:
            with pytest.raises(NotAStoreError):
                seqstore.open(url)
        elif name == MANIFEST_NAME:
            with pytest.raises(PartialStoreError, match="an upload that did not finish"):
                seqstore.open(url)
            seen_partial.append(name)
        puts.append((name, local_top.is_file()))
        put_file(self, local, target)

    monkeypatch.setattr(ObjectStore, "put_file", logged)
    argv = ["convert", str(stores["images"]), url, "--format", "hdf5", "-q"]
    argv += ["--shard-mb", str(SHARD_MB), "--workers", "2", "--staging-dir", str(staging)]
    assert main(argv) == 0
    monkeypatch.setattr(ObjectStore, "put_file", put_file)

    expected = sorted(p.relative_to(sharded).as_posix() for p in sharded.rglob("*") if p.is_file())
    names = [name for name, _ in puts]
    assert sorted(names) == expected  # the shards' own manifests too
    assert len(expected) == 1 + 2 * 4
    assert names[-1] == MANIFEST_NAME  # the store's manifest last ...
    assert not any(finished for _, finished in puts[:-1])  # ... each shard before the store
    for i in range(4):  # was finished, each shard's data before the manifest vouching for it
        assert names.index(f"shard-{i:05d}/data.h5") < names.index(f"shard-{i:05d}/{MANIFEST_NAME}")
    assert seen_partial
    fs = s3_server.filesystem()
    assert sorted(p[len(bucket) + 7 :] for p in fs.find(f"{bucket}/train")) == expected

    remote = seqstore.open(url)
    local = seqstore.open(sharded)
    assert isinstance(remote, ShardedReader)
    assert remote.shard_bounds.tolist() == local.shard_bounds.tolist() == [0, 25, 50, 75, 90]
    assert (
        remote.read_block(0, N)
        == local.read_block(0, N)
        == seqstore.open(stores["hdf5"]).read_block(0, N)
    )  # the records of an unsharded conversion, in its order
    for start, stop in [(20, 60), (24, 26), (25, 50), (49, 90), (7, 7)]:
        assert remote.read_block(start, stop) == local.read_block(start, stop)
    assert np.array_equal(remote.labels(), local.labels())
    remote.check_index()
    # With the index and keys in hand, a block is one ranged GET per shard it touches.
    shards = [remote.shard(i) for i in range(4)]
    gets = sum(s.place.store.gets for s in shards)  # type: ignore[attr-defined]
    assert remote.read_block(20, 60) == local.read_block(20, 60)
    assert sum(s.place.store.gets for s in shards) == gets + 3  # type: ignore[attr-defined]

    opts = _opts(num_workers=2, with_indices=True, seed=5)
    li, ll, lx = collect_epoch(Loader(sharded, **opts))
    ri, rl, rx = collect_epoch(Loader(url, **opts))
    assert ri == li and rl == ll and sorted(ri) == list(range(N))
    assert all(torch.equal(a, b) for a, b in zip(lx, rx, strict=True))


def test_sharded_store_at_a_url_missing_a_shard_is_refused(
    s3_server: S3Server, sharded: Path, bucket: str
) -> None:
    url = _upload(s3_server, sharded, f"s3://{bucket}/train")
    opts = s3_server.storage_options()
    assert seqstore.open(url, storage_options=opts).read_block(0, N) == seqstore.open(
        sharded
    ).read_block(0, N)
    s3_server.filesystem().rm(f"{bucket}/train/shard-00002", recursive=True)
    reader = seqstore.open(url, storage_options=opts)  # shard 0 is there
    assert reader.read_block(0, 50) == seqstore.open(sharded).read_block(0, 50)
    with pytest.raises(CorruptStoreError, match="lacks its shard 'shard-00002'"):
        reader.read_block(40, 60)


def test_sharded_lmdb_at_a_url_reads_through_the_cache(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, tmp_path: Path
) -> None:
    url = f"s3://{bucket}/train.lmdb"
    opts = s3_server.storage_options()
    local_top = staging_path(url, tmp_path / "staging") / MANIFEST_NAME
    finished: list[bool] = []  # at each upload, whether the store was finished
    put_file = ObjectStore.put_file

    def logged(self: ObjectStore, local: Any, target: str) -> None:
        finished.append(local_top.is_file())
        put_file(self, local, target)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ObjectStore, "put_file", logged)
        convert(  # shards written in this process (workers=0), each uploaded once written
            stores["images"],
            url,
            format="lmdb",
            shard_mb=SHARD_MB,
            workers=0,
            progress=False,
            storage_options=opts,
            staging_dir=tmp_path / "staging",
        )
    assert finished == [False] * 8 + [True]
    expected = seqstore.open(stores["lmdb"]).read_block(0, N)
    in_place = seqstore.open(url, storage_options=opts)
    assert isinstance(in_place, ShardedReader) and len(in_place.shards) == 4
    assert in_place.read_block(0, N) == expected
    reader = seqstore.open(url, storage_options=opts, cache_dir=tmp_path / "cache")
    assert isinstance(reader, ShardedReader) and len(reader.shards) == 4
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "cache").rglob("data.mdb"))) < 4:  # a copy of each shard
        assert reader.read_block(0, N) == expected
        assert time.monotonic() < deadline, "the copies never came"
        time.sleep(0.1)
    assert reader.read_block(0, N) == expected


def test_blocks_are_read_straight_over_http_not_through_fsspec(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    reader = seqstore.open(url, storage_options=s3_server.storage_options())
    fs = reader.place.store.fs  # type: ignore[attr-defined]

    def through_fsspec(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a block was read through fsspec")

    for name in ("cat_file", "_cat_file", "cat_ranges", "_cat_ranges"):
        monkeypatch.setattr(type(fs), name, through_fsspec)
    local = seqstore.open(stores["hdf5"])
    for start, stop in [(0, N), (17, 53), (N - 1, N)]:
        assert reader.read_block(start, stop) == local.read_block(start, stop)


def test_a_refused_presigned_url_is_signed_again(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    if s3_server.kind != "seaweedfs":
        pytest.skip(f"{s3_server.kind} does not check signatures")
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    reader = seqstore.open(url, storage_options=s3_server.storage_options())
    local = seqstore.open(stores["hdf5"])
    assert reader.read_block(0, 5) == local.read_block(0, 5)
    key = next(k for k in presigned._signed if k[0] == reader.data.name)  # type: ignore[attr-defined]
    # As a URL whose credentials were rotated would be: refused by the server.
    bad = re.sub(r"((?:X-Amz-)?Signature=)[^&]+", r"\g<1>00", presigned._signed[key][0])
    assert bad != presigned._signed[key][0]
    presigned._signed[key] = (bad, time.time() + presigned.SIGN_S)
    assert reader.read_block(10, N) == local.read_block(10, N)
    assert presigned._signed[key][0] != bad
    assert reader.place.store._presigned is not None  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "options", "env", "direct_path"),
    [
        (
            "s3://b/x.h5",
            {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://h"}},
            {},
            True,
        ),
        ("s3://b/x.h5", {"anon": True, "client_kwargs": {"verify": False}}, {}, True),
        ("s3://b/x.h5", {"requester_pays": True}, {}, False),
        ("s3://b/x.h5", {"client_kwargs": {"proxies": {"https": "http://p"}}}, {}, False),
        ("s3://b/x.h5", {}, {"HTTPS_PROXY": "http://proxy:3128"}, False),
        ("https://host/x.h5", {}, {}, True),
        ("https://host/x.h5", {"headers": {"Authorization": "Bearer t"}}, {}, False),
        ("gs://b/x.h5", {}, {}, False),
    ],
)
def test_which_stores_are_read_straight_over_http(
    url: str,
    options: dict[str, Any],
    env: dict[str, str],
    direct_path: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert (ObjectStore(url, options)._presigned is not None) == direct_path


def test_overwrite_removes_the_files_of_the_store_it_replaces(
    s3_server: S3Server, stores: dict[str, Path], bucket: str
) -> None:
    url = f"s3://{bucket}/train"
    options = s3_server.storage_options()
    remote = ObjectStore(url, options)
    other = remote.join("notes.txt")  # not the store's: never touched
    remote.fs.pipe(other, b"mine")

    def files() -> set[str]:
        prefix = remote.fs._strip_protocol(url) + "/"
        return {path.removeprefix(prefix) for path in remote.fs.find(url, refresh=True)}

    convert(
        stores["images"], url, format="lmdb", shard_mb=0.02, storage_options=options, progress=False
    )
    before = files()
    shards = {name.split("/")[0] for name in before if name.startswith("shard-")}
    assert len(shards) > 2
    convert(
        stores["images"],
        url,
        format="hdf5",
        shard_mb=1.0,
        overwrite=True,
        storage_options=options,
        progress=False,
    )
    after = files()
    manifest = seqstore.open(url, storage_options=options).manifest
    kept = {
        f"{s.name}/{name}"
        for s in manifest.shards or ()
        for name in (*s.data_files, "seqstore.json")
    }
    assert after == kept | {"seqstore.json", "notes.txt"}
    assert not any(name.endswith("data.mdb") for name in after)
    reader = seqstore.open(url, storage_options=options)
    assert reader.read_block(0, N) == seqstore.open(stores["hdf5"]).read_block(0, N)


def test_a_mix_of_a_store_at_a_url_and_a_local_one_reads_as_both_local(
    s3_server: S3Server, stores: dict[str, Path], bucket: str, tmp_path: Path
) -> None:
    """A mix's remote source takes the storage options and the cache; its local one, none:
    the epoch is the epoch of the same two stores on a local disk."""
    url = _upload(s3_server, stores["hdf5"], f"s3://{bucket}/train.h5")
    opts = _opts(num_workers=2, with_indices=True, seed=3, weights=[1, 2])
    local = collect_epoch(Loader([str(stores["hdf5"]), str(stores["lmdb"])], **opts))
    remote = Loader(
        [url, str(stores["lmdb"])],
        storage_options=s3_server.storage_options(),
        cache_dir=tmp_path / "cache",
        **opts,
    )
    mixed = collect_epoch(remote)
    assert mixed[0] == local[0] and mixed[1] == local[1]
    assert all(torch.equal(a, b) for a, b in zip(mixed[2], local[2], strict=True))
    assert any((tmp_path / "cache").rglob("*"))  # the remote source went through the cache

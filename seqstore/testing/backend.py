"""The conformance suite every backend must pass, plugins and read-only formats included.

Subclass :class:`BackendSuite` in a test module, set ``backend_name`` and supply the bypass
hooks, which touch the format's files without the store, following the layout that the
backend's module documents::

    from seqstore.testing.backend import BackendSuite

    class TestMyBackend(BackendSuite):
        backend_name = "mine"

        def write_raw(self, path, records, classes):
            ...  # the store's files, written with the format's own library

        def read_raw(self, path):
            ...  # the records in those files, read with the format's own library

So a writer and a reader that agree on a wrong layout still fail: the reader must read
files written by :meth:`~BackendSuite.write_raw`, and :meth:`~BackendSuite.read_raw` must
find the records in files the writer wrote. Tests of a capability the backend lacks (a
writer, single-record reads) are skipped with the reason; a read-only backend needs no
``read_raw``. Every test writes real files under pytest's ``tmp_path``.

Each backend runs three ways: as written (local), as a sharded store
(``writer_options={"shard_bytes": ...}``), and from object storage: a subclass that mixes in
:class:`OverS3` uploads every store the suite reads to the S3 test server (the ``s3_server``
fixture) and opens it by URL through :meth:`BackendSuite.open_store`, the one hook through
which the suite opens what it reads. The writing tests do not run over S3 (stores are
written on a local disk and uploaded).
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

import seqstore
from seqstore.backends import Backend, Reader, Writer, get_backend
from seqstore.backends.sharded import sharded_writer_cls
from seqstore.errors import PartialStoreError, StoreExistsError
from seqstore.manifest import Manifest, Provenance, write_manifest
from seqstore.records import Record

from .data import make_records

__all__ = ["CLASSES", "BackendSuite", "OverS3", "seal_raw_store"]

CLASSES = ["class00", "class01", "class02", "class03"]


def seal_raw_store(
    path: Path,
    *,
    format: str,
    format_version: int,
    records: Sequence[Record],
    classes: Sequence[str],
    data_files: Sequence[str] = (),
    index_digest: str | None = None,
) -> None:
    """Write the manifest of a store whose data files a ``write_raw`` hook wrote into
    ``path``: the manifest is what makes a directory a complete store."""
    write_manifest(
        path,
        Manifest(
            format=format,
            format_version=format_version,
            num_records=len(records),
            total_bytes=sum(len(r.data) for r in records),
            classes=list(classes),
            provenance=Provenance(seqstore_version=seqstore.__version__),
            data_files={name: (path / name).stat().st_size for name in data_files},
            index_digest=index_digest,
        ),
    )


def _checksums_of(reader: Reader, start: int, stop: int) -> list[tuple[str, int]]:
    return [(r.key, r.checksum if r.verify() else -1) for r in reader.read_block(start, stop)]


def _writer(backend: type[Backend], path: Path, **options: Any) -> Writer:
    """The backend's writer of a new store at ``path``; with ``shard_bytes`` among the
    options, the writer of a sharded store of the backend (or the backend's own, where its
    files are shards of a size)."""
    if "shard_bytes" in options and not backend.writer_shards():
        return sharded_writer_cls(backend)(path, **options)
    return backend.open_writer(path, **options)


def _write_half_and_die(
    backend: type[Backend], path: Path, records: list[Record], options: dict[str, Any]
) -> None:
    writer = _writer(backend, path, classes=CLASSES, **options)
    for record in records[: len(records) // 2]:
        writer.write(record)
    os._exit(0)  # the writer never finishes, as when a process is killed


def _needs_writer(backend: type[Backend]) -> None:
    if backend.writer_cls is None:
        pytest.skip(f"the '{backend.name}' backend has no writer")


class BackendSuite:
    """Behaviour users rely on, checked against real files of one backend.

    Attributes
    ----------
    backend_name : str
        The registered name of the backend under test.
    writer_options : dict
        Passed to every ``open_writer`` of the suite: ``{"shard_bytes": N}`` runs it on
        sharded stores of the backend.
    """

    backend_name: ClassVar[str]
    writer_options: ClassVar[dict[str, Any]] = {}

    # -- hooks the subclass supplies ---------------------------------------------------------
    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        """Write ``records`` as a complete store at ``path`` without the backend's writer,
        with the format's own library, following the documented layout (manifest included,
        see :func:`seal_raw_store`, for formats that have one)."""
        raise NotImplementedError(f"{type(self).__name__} must implement write_raw")

    def read_raw(self, path: Path) -> list[Record]:
        """The records of the store at ``path``, in storage order, read without the backend's
        reader. Needed only for a backend with a writer."""
        raise NotImplementedError(f"{type(self).__name__} must implement read_raw")

    def expected(self, records: Sequence[Record]) -> list[Record]:
        """What a reader returns for ``records`` written by the writer or :meth:`write_raw`.

        The default: the records in written order, or in key order for a backend that does
        not keep write order (an image folder). Override it for a format that does not keep
        every field (tensorpack files keep no keys).
        """
        if get_backend(self.backend_name).keeps_order:
            return list(records)
        return sorted(records, key=lambda r: r.key)

    def reader_type(self, backend: type[Backend]) -> type[Reader]:
        """The class of the reader :func:`seqstore.open` returns for the suite's stores."""
        return backend.reader_cls

    def open_writer(self, backend: type[Backend], path: Path, **options: Any) -> Writer:
        """The backend's writer of a new store at ``path``, with :attr:`writer_options`;
        with ``shard_bytes`` among them, the writer of a sharded store of the backend."""
        return _writer(backend, path, **self.writer_options, **options)

    def open_store(self, path: Path) -> Reader:
        """The reader of the store the suite made at ``path``: :func:`seqstore.open` of it
        (:class:`OverS3` opens it from object storage instead)."""
        return seqstore.open(path)

    def writes_here(self, backend: type[Backend]) -> None:
        """Skip a writing test where the backend has no writer, or the suite reads stores
        from elsewhere than where they are written."""
        _needs_writer(backend)

    # -- fixtures ----------------------------------------------------------------------------

    @pytest.fixture
    def backend(self) -> type[Backend]:
        return get_backend(self.backend_name)

    @pytest.fixture
    def records(self) -> list[Record]:
        return make_records(37, classes=len(CLASSES), seed=3)

    @pytest.fixture
    def store(self, tmp_path: Path, backend: type[Backend], records: list[Record]) -> Path:
        """The records as a store: written by the backend's writer, or by :meth:`write_raw`
        for a backend without one."""
        path = tmp_path / "store"
        if backend.writer_cls is None:
            self.write_raw(path, records, CLASSES)
            return path
        with self.open_writer(backend, path, classes=CLASSES) as writer:
            for record in records:
                writer.write(record)
        return path

    # -- the layout, through the bypass hooks ------------------------------------------------
    def test_reader_reads_files_written_raw(self, tmp_path: Path, records: list[Record]) -> None:
        path = tmp_path / "raw"
        self.write_raw(path, records, CLASSES)
        reader = self.open_store(path)
        assert reader.read_block(0, len(reader)) == self.expected(records)
        assert reader.labels().tolist() == [r.label for r in self.expected(records)]
        reader.check_index()

    def test_writer_writes_the_documented_layout(
        self, tmp_path: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        self.writes_here(backend)
        path = tmp_path / "written"
        with self.open_writer(backend, path, classes=CLASSES) as writer:
            for record in records:
                writer.write(record)
        assert self.read_raw(path) == self.expected(records)

    # -- reading -----------------------------------------------------------------------------
    def test_round_trip_keeps_bytes_labels_keys_and_order(
        self, store: Path, records: list[Record]
    ) -> None:
        reader = self.open_store(store)
        got = reader.read_block(0, len(reader))
        assert got == self.expected(records)
        assert all(r.verify() for r in got)

    def test_open_dispatches_on_format(self, store: Path, backend: type[Backend]) -> None:
        reader = self.open_store(store)
        assert reader.manifest.format == self.backend_name
        assert isinstance(reader, self.reader_type(backend))

    def test_manifest_describes_the_store(
        self, store: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        _needs_writer(backend)
        m = self.open_store(store).manifest
        assert m.num_records == len(records)
        assert m.total_bytes == sum(len(r.data) for r in records)
        assert m.classes == CLASSES
        assert m.provenance.seqstore_version == seqstore.__version__

    @pytest.mark.parametrize("span", [(0, 0), (0, 1), (5, 6), (3, 20), (0, 37), (30, 37), (36, 37)])
    def test_read_block_equals_single_reads(
        self, store: Path, backend: type[Backend], span: tuple[int, int]
    ) -> None:
        if not backend.reader_cls.random_access:
            pytest.skip(f"the '{backend.name}' reader has no random access")
        reader = self.open_store(store)
        start, stop = span
        assert reader.read_block(start, stop) == [reader.read(i) for i in range(start, stop)]

    def test_shard_bounds_cut_the_store_and_reads_cross_them(self, store: Path) -> None:
        reader = self.open_store(store)
        bounds = reader.shard_bounds.tolist()
        assert bounds[0] == 0 and bounds[-1] == len(reader) and bounds == sorted(bounds)
        everything = reader.read_block(0, len(reader))
        for b in bounds[1:-1]:  # a block that crosses a bound reads as one that does not
            assert reader.read_block(b - 1, b + 1) == everything[b - 1 : b + 1]
            assert reader.read_block(0, b) + reader.read_block(b, len(reader)) == everything

    @pytest.mark.parametrize("span", [(-1, 2), (5, 4), (0, 38)])
    def test_read_block_out_of_range_raises(self, store: Path, span: tuple[int, int]) -> None:
        with pytest.raises(IndexError):
            self.open_store(store).read_block(*span)

    def test_labels_match_records(self, store: Path) -> None:
        reader = self.open_store(store)
        assert reader.labels().tolist() == [r.label for r in reader.read_block(0, len(reader))]

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_reader_made_in_parent_works_in_child(self, store: Path, method: str) -> None:
        reader = self.open_store(store)
        expected = _checksums_of(reader, 0, len(reader))  # the parent's handle is now open
        with mp.get_context(method).Pool(2) as pool:
            halves = pool.starmap(_checksums_of, [(reader, 0, 20), (reader, 20, len(reader))])
        assert halves[0] + halves[1] == expected
        assert _checksums_of(reader, 0, len(reader)) == expected  # parent still fine

    # -- writing -----------------------------------------------------------------------------
    def test_partial_store_is_refused(
        self, tmp_path: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        self.writes_here(backend)
        path = tmp_path / "partial"
        child = mp.get_context("fork").Process(
            target=_write_half_and_die, args=(backend, path, records, self.writer_options)
        )
        child.start()
        child.join()
        with pytest.raises(PartialStoreError, match="incomplete"):
            seqstore.open(path)
        with pytest.raises(PartialStoreError):
            backend.open_reader(path)

    def test_error_while_writing_leaves_no_store(
        self, tmp_path: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        self.writes_here(backend)
        path = tmp_path / "aborted"
        with pytest.raises(RuntimeError, match="boom"):
            with self.open_writer(backend, path, classes=CLASSES) as writer:
                writer.write(records[0])
                raise RuntimeError("boom")
        assert not path.exists()

    def test_existing_store_refused_unless_overwrite(
        self, store: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        self.writes_here(backend)
        with pytest.raises(StoreExistsError, match="overwrite"):
            self.open_writer(backend, store, classes=CLASSES)
        with self.open_writer(backend, store, classes=CLASSES, overwrite=True) as writer:
            writer.write(records[0])
        assert len(seqstore.open(store)) == 1
        assert sorted(p.name for p in store.parent.iterdir()) == [store.name]  # nothing aside

    def test_failed_overwrite_keeps_the_old_store(
        self, store: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        self.writes_here(backend)
        old = seqstore.open(store)
        before = [r.data for r in old.read_block(0, len(old))]
        old.close()
        with pytest.raises(RuntimeError, match="boom"):
            with self.open_writer(backend, store, classes=CLASSES, overwrite=True) as writer:
                writer.write(records[0])
                raise RuntimeError("boom")
        reader = seqstore.open(store)
        assert [r.data for r in reader.read_block(0, len(reader))] == before
        assert sorted(p.name for p in store.parent.iterdir()) == [store.name]

    def test_non_store_directory_is_never_overwritten(
        self, tmp_path: Path, backend: type[Backend]
    ) -> None:
        self.writes_here(backend)
        (tmp_path / "mine.txt").write_text("user data")
        with pytest.raises(StoreExistsError, match="not a seqstore store"):
            self.open_writer(backend, tmp_path, classes=CLASSES, overwrite=True)
        assert (tmp_path / "mine.txt").read_text() == "user data"

    def test_empty_store(self, tmp_path: Path, backend: type[Backend]) -> None:
        self.writes_here(backend)
        with self.open_writer(backend, tmp_path / "empty", classes=CLASSES):
            pass
        reader = seqstore.open(tmp_path / "empty")
        assert len(reader) == 0
        assert reader.read_block(0, 0) == []


# Uploads of the suite's stores, each under a prefix of its own in one bucket per server
# (SeaweedFS takes seconds to set up a bucket).
_buckets: dict[str, str] = {}
_uploads = itertools.count()


class OverS3:
    """Mixin for a :class:`BackendSuite` subclass: the suite's stores are read from the S3
    test server (the ``s3_server`` fixture), uploaded there file by file and opened by URL.

    A backend whose reader reads local files only (an image folder, which is listed rather
    than read by name) skips with the reason.
    """

    backend_name: ClassVar[str]

    @pytest.fixture(autouse=True)
    def _server(self, request: pytest.FixtureRequest) -> None:
        backend = get_backend(self.backend_name)
        if not backend.reads_urls:
            pytest.skip(f"the '{backend.name}' backend reads local files only")
        self._s3 = request.getfixturevalue("s3_server")

    def writes_here(self, backend: type[Backend]) -> None:
        # docstring inherited
        del backend
        pytest.skip("stores are written on a local disk; their upload is tested apart")

    def open_store(self, path: Path) -> Reader:
        """Upload the store at ``path`` (a directory, or a single file) to the S3 test
        server and open it by URL."""
        server = self._s3
        bucket = _buckets.get(server.endpoint)
        if bucket is None:
            bucket = _buckets[server.endpoint] = f"suite-{time.monotonic_ns() % 10**9}"
            server.make_bucket(bucket)
        url = f"s3://{bucket}/u{next(_uploads)}/{path.name}"
        fs = server.filesystem()
        if path.is_file():
            fs.put_file(str(path), url)
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file())
            # Manifests last, as an upload of seqstore's makes them appear.
            for file in sorted(files, key=lambda p: p.name == "seqstore.json"):
                fs.put_file(str(file), f"{url}/{file.relative_to(path).as_posix()}")
        return seqstore.open(url, storage_options=server.storage_options())

"""The conformance suite every writable backend must pass, plugins included.

Subclass :class:`BackendSuite` in a test module and set ``backend_name``::

    from seqstore.testing.backend import BackendSuite

    class TestMyBackend(BackendSuite):
        backend_name = "mine"

Every test writes real files under pytest's ``tmp_path``.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, ClassVar

import pytest

import seqstore
from seqstore.backends import Backend, Reader, get_backend
from seqstore.errors import PartialStoreError, StoreExistsError
from seqstore.records import Record

from .data import make_records

__all__ = ["BackendSuite"]

CLASSES = ["class00", "class01", "class02", "class03"]


def _checksums_of(reader: Reader[Any], start: int, stop: int) -> list[tuple[str, int]]:
    return [(r.key, r.checksum if r.verify() else -1) for r in reader.read_block(start, stop)]


def _write_half_and_die(backend: type[Backend], path: Path, records: list[Record]) -> None:
    writer = backend.open_writer(path, classes=CLASSES)
    for record in records[: len(records) // 2]:
        writer.write(record)
    os._exit(0)  # the writer never finishes, as when a process is killed


class BackendSuite:
    """Behaviour users rely on, checked against real files of one backend."""

    backend_name: ClassVar[str]

    @pytest.fixture
    def backend(self) -> type[Backend]:
        return get_backend(self.backend_name)

    @pytest.fixture
    def records(self) -> list[Record]:
        return make_records(37, classes=len(CLASSES), seed=3)

    @pytest.fixture
    def store(self, tmp_path: Path, backend: type[Backend], records: list[Record]) -> Path:
        path = tmp_path / "store"
        with backend.open_writer(path, classes=CLASSES) as writer:
            for record in records:
                writer.write(record)
        return path

    def expected(self, backend: type[Backend], records: list[Record]) -> list[Record]:
        # A backend that does not keep write order (an image folder) reads in key order.
        return list(records) if backend.keeps_order else sorted(records, key=lambda r: r.key)

    def test_round_trip_keeps_bytes_labels_keys_and_order(
        self, store: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        reader = seqstore.open(store)
        got = reader.read_block(0, len(reader))
        assert got == self.expected(backend, records)
        assert all(r.verify() for r in got)

    def test_open_dispatches_on_manifest(self, store: Path, backend: type[Backend]) -> None:
        reader = seqstore.open(store)
        assert reader.manifest.format == self.backend_name
        assert isinstance(reader, type(backend.open_reader(store)))

    def test_manifest_describes_the_store(self, store: Path, records: list[Record]) -> None:
        m = seqstore.open(store).manifest
        assert m.num_records == len(records)
        assert m.total_bytes == sum(len(r.data) for r in records)
        assert m.classes == CLASSES
        assert m.provenance.seqstore_version == seqstore.__version__

    @pytest.mark.parametrize("span", [(0, 0), (0, 1), (5, 6), (3, 20), (0, 37), (30, 37), (36, 37)])
    def test_read_block_equals_single_reads(self, store: Path, span: tuple[int, int]) -> None:
        reader = seqstore.open(store)
        start, stop = span
        assert reader.read_block(start, stop) == [reader.read(i) for i in range(start, stop)]

    @pytest.mark.parametrize("span", [(-1, 2), (5, 4), (0, 38)])
    def test_read_block_out_of_range_raises(self, store: Path, span: tuple[int, int]) -> None:
        with pytest.raises(IndexError):
            seqstore.open(store).read_block(*span)

    def test_labels_match_records(self, store: Path) -> None:
        reader = seqstore.open(store)
        assert reader.labels().tolist() == [r.label for r in reader.read_block(0, len(reader))]

    @pytest.mark.parametrize("method", ["fork", "spawn"])
    def test_reader_made_in_parent_works_in_child(self, store: Path, method: str) -> None:
        reader = seqstore.open(store)
        expected = _checksums_of(reader, 0, len(reader))  # the parent's handle is now open
        with mp.get_context(method).Pool(2) as pool:
            halves = pool.starmap(_checksums_of, [(reader, 0, 20), (reader, 20, len(reader))])
        assert halves[0] + halves[1] == expected
        assert _checksums_of(reader, 0, len(reader)) == expected  # parent still fine

    def test_partial_store_is_refused(
        self, tmp_path: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        path = tmp_path / "partial"
        child = mp.get_context("fork").Process(
            target=_write_half_and_die, args=(backend, path, records)
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
        path = tmp_path / "aborted"
        with pytest.raises(RuntimeError, match="boom"):
            with backend.open_writer(path, classes=CLASSES) as writer:
                writer.write(records[0])
                raise RuntimeError("boom")
        assert not path.exists()

    def test_existing_store_refused_unless_overwrite(
        self, store: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        with pytest.raises(StoreExistsError, match="overwrite"):
            backend.open_writer(store, classes=CLASSES)
        with backend.open_writer(store, classes=CLASSES, overwrite=True) as writer:
            writer.write(records[0])
        assert len(seqstore.open(store)) == 1
        assert sorted(p.name for p in store.parent.iterdir()) == [store.name]  # nothing aside

    def test_failed_overwrite_keeps_the_old_store(
        self, store: Path, backend: type[Backend], records: list[Record]
    ) -> None:
        old = seqstore.open(store)
        before = [r.data for r in old.read_block(0, len(old))]
        old.close()
        with pytest.raises(RuntimeError, match="boom"):
            with backend.open_writer(store, classes=CLASSES, overwrite=True) as writer:
                writer.write(records[0])
                raise RuntimeError("boom")
        reader = seqstore.open(store)
        assert [r.data for r in reader.read_block(0, len(reader))] == before
        assert sorted(p.name for p in store.parent.iterdir()) == [store.name]

    def test_non_store_directory_is_never_overwritten(
        self, tmp_path: Path, backend: type[Backend]
    ) -> None:
        (tmp_path / "mine.txt").write_text("user data")
        with pytest.raises(StoreExistsError, match="not a seqstore store"):
            backend.open_writer(tmp_path, classes=CLASSES, overwrite=True)
        assert (tmp_path / "mine.txt").read_text() == "user data"

    def test_empty_store(self, tmp_path: Path, backend: type[Backend]) -> None:
        with backend.open_writer(tmp_path / "empty", classes=CLASSES):
            pass
        reader = backend.open_reader(tmp_path / "empty")
        assert len(reader) == 0
        assert reader.read_block(0, 0) == []

"""Backends by name: built-ins, plugins through entry points, and clear errors."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import seqstore
from seqstore.backends import registry
from seqstore.errors import BackendNotFoundError, ConfigError, NotAStoreError
from seqstore.testing import make_records
from seqstore.testing.backend import seal_raw_store


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry.registry)
    registry._entry_points_loaded = False
    yield
    registry._table.clear()
    registry._table.update(saved)
    registry._entry_points_loaded = False


def test_builtin_backends_are_listed() -> None:
    assert {"folder", "hdf5", "lmdb", "tensorpack"} <= set(seqstore.available_backends())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(BackendNotFoundError, match="unknown backend 'zarr'; choose one of: .*hdf5"):
        seqstore.get_backend("zarr")


def test_missing_dependency_names_what_to_install(clean_registry: None) -> None:
    seqstore.register_backend("needs_dep", "seqstore_no_such_module.backend:Backend")
    with pytest.raises(BackendNotFoundError, match="needs the package 'seqstore_no_such_module'"):
        seqstore.get_backend("needs_dep")


def test_name_clash_needs_overwrite(clean_registry: None) -> None:
    with pytest.raises(ValueError, match="already registered"):
        seqstore.register_backend("lmdb", "x:Y")
    seqstore.register_backend("lmdb", "seqstore.backends.hdf5:HDF5Backend", overwrite=True)
    assert seqstore.get_backend("lmdb").name == "hdf5"


def test_registering_the_same_backend_again_is_not_a_clash(clean_registry: None) -> None:
    from seqstore.backends.lmdb import LMDBBackend

    seqstore.register_backend("lmdb", LMDBBackend)  # the class of the built-in's dotted path
    seqstore.register_backend("lmdb", LMDBBackend)
    seqstore.register_backend("lmdb", "seqstore.backends.lmdb:LMDBBackend")
    assert seqstore.get_backend("lmdb") is LMDBBackend
    assert registry.registry["lmdb"].data_files == ("data.mdb",)  # the row keeps its facts


def test_registry_is_a_read_only_view() -> None:
    assert registry.registry["tensorpack"].extra == "tensorpack"
    with pytest.raises(TypeError):
        registry.registry["x"] = registry.BackendEntry("x:Y")  # type: ignore[index]


def test_backend_without_writer_refuses_in_one_line() -> None:
    with pytest.raises(ConfigError, match="'tensorpack' backend cannot write stores"):
        seqstore.get_backend("tensorpack").open_writer("anywhere")


def test_reader_without_random_access_refuses_single_reads(tmp_path: Path) -> None:
    from seqstore.backends.lmdb import LMDBReader

    class BlocksOnly(LMDBReader):
        random_access = False

    path = tmp_path / "store"
    records = make_records(3)
    with seqstore.get_backend("lmdb").open_writer(path) as writer:
        for record in records:
            writer.write(record)
    reader = BlocksOnly(path)
    assert reader.read_block(1, 2) == records[1:2]
    with pytest.raises(ConfigError, match="cannot read one record by position"):
        reader.read(1)


def test_a_url_given_to_a_reader_names_seqstore_open() -> None:
    from seqstore.backends.folder import FolderReader

    with pytest.raises(NotAStoreError, match="'s3://bucket/train' is a URL; open it with seqstore"):
        FolderReader("s3://bucket/train")


def test_plugin_found_through_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None
) -> None:
    (tmp_path / "seqstore_mirror.py").write_text(
        textwrap.dedent(
            """
            from seqstore.backends.lmdb import LMDBBackend, LMDBWriter

            class MirrorWriter(LMDBWriter):
                format = "mirror"

            class MirrorBackend(LMDBBackend):
                name = "mirror"
                writer_cls = MirrorWriter
            """
        )
    )
    dist = tmp_path / "seqstore_mirror-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: seqstore-mirror\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[seqstore.backends]\nmirror = seqstore_mirror:MirrorBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "mirror" in seqstore.available_backends()
    backend = seqstore.get_backend("mirror")
    records = make_records(5)
    with backend.open_writer(tmp_path / "store", classes=["a", "b", "c", "d"]) as writer:
        for record in records:
            writer.write(record)
    reader = seqstore.open(tmp_path / "store")  # dispatches on the manifest's format
    assert reader.manifest.format == "mirror"
    assert reader.read_block(0, 5) == records


# A third-party format of its own, written against the place a reader is given: records back
# to back in records.bin, and their rows in rows.json. Nothing in it knows about URLs.
FLAT_PLUGIN = """
import json

from seqstore.backends import Backend, Reader
from seqstore.backends.reader import store_manifest
from seqstore.records import Record


class FlatReader(Reader):
    def __init__(self, location):
        super().__init__(location)
        self._manifest = store_manifest(self.place)
        self.rows = json.loads(self.place.read_bytes("rows.json"))
        self.data = self.open_data("records.bin")

    @property
    def manifest(self):
        return self._manifest

    def read_block(self, start, stop):
        self._check_range(start, stop)
        rows = self.rows[start:stop]
        pieces = self.data.read_extents([(row[2], row[3]) for row in rows])
        return [
            Record.make(row[0], row[1], bytes(piece), row[4], row[5])
            for row, piece in zip(rows, pieces)
        ]


class FlatBackend(Backend):
    name = "flat"
    reader_cls = FlatReader
"""


def test_plugin_backend_reads_from_a_url_with_no_code_of_its_own_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None, s3_server: Any
) -> None:
    (tmp_path / "seqstore_flat.py").write_text(FLAT_PLUGIN)
    dist = tmp_path / "seqstore_flat-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: seqstore-flat\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[seqstore.backends]\nflat = seqstore_flat:FlatBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    records = make_records(9, classes=3)
    store = tmp_path / "store"
    store.mkdir()
    rows, offset = [], 0
    with open(store / "records.bin", "wb") as f:
        for r in records:
            f.write(r.data)
            rows.append([r.key, r.label, offset, len(r.data), r.width, r.height])
            offset += len(r.data)
    (store / "rows.json").write_text(json.dumps(rows))
    seal_raw_store(
        store,
        format="flat",
        format_version=1,
        records=records,
        classes=["a", "b", "c"],
        data_files=["records.bin"],
    )
    bucket = f"plugin-{time.monotonic_ns() % 10**8}"
    s3_server.make_bucket(bucket)
    fs = s3_server.filesystem()
    for name in ("records.bin", "rows.json", "seqstore.json"):
        fs.put_file(str(store / name), f"s3://{bucket}/flat/{name}")

    local = seqstore.open(store)
    remote = seqstore.open(f"s3://{bucket}/flat", storage_options=s3_server.storage_options())
    assert type(remote).__name__ == type(local).__name__ == "FlatReader"
    assert remote.read_block(0, 9) == local.read_block(0, 9) == records
    assert remote.read_block(3, 5) == records[3:5]

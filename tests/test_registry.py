"""Backends by name: built-ins, plugins through entry points, and clear errors."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import seqstore
from seqstore.backends import registry
from seqstore.errors import BackendNotFoundError
from seqstore.testing import make_records


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(registry._registry)
    registry._entry_points_loaded = False
    yield
    registry._registry.clear()
    registry._registry.update(saved)
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

                @classmethod
                def open_writer(cls, path, **kwargs):
                    return MirrorWriter(path, **kwargs)
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

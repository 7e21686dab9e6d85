"""Every built-in writable backend against the shared conformance suite, LMDB and HDF5 also
as sharded stores, and each of those read from the S3 test server.

The bypass hooks write and read each format with its own library (lmdb, h5py, the file
system), following the layout documented in the backend's module, never through seqstore;
a sharded store's shards are raw stores of the format under a manifest made by hand.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
from pathlib import Path

import h5py
import lmdb
import numpy as np
import pytest
from PIL import Image

import seqstore
from seqstore.backends import Backend, Reader, get_backend
from seqstore.backends.sharded import ShardedReader
from seqstore.manifest import Manifest, Provenance, Shard, index_digest, write_manifest
from seqstore.records import Record
from seqstore.testing.backend import BackendSuite, OverS3, seal_raw_store

LMDB_HEADER = struct.Struct("<iIIIH")  # label, width, height, crc32, key length
LMDB_LABELS = b"\xffseqstore:labels"
LMDB_CHECKSUMS = b"\xffseqstore:checksums"


def _index_arrays(records: Sequence[Record]) -> tuple[bytes, bytes]:
    labels = np.array([r.label for r in records], np.int32).tobytes()
    checksums = np.array([r.checksum for r in records], np.uint32).tobytes()
    return labels, checksums


class TestLMDB(BackendSuite):
    backend_name = "lmdb"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        path.mkdir()
        env = lmdb.open(str(path), subdir=True, map_size=1 << 28)
        labels, checksums = _index_arrays(records)
        with env.begin(write=True) as txn:
            for i, r in enumerate(records):
                key = r.key.encode("utf-8", "surrogateescape")
                header = LMDB_HEADER.pack(r.label, r.width, r.height, r.checksum, len(key))
                txn.put(i.to_bytes(8, "big"), header + key + r.data)
            txn.put(LMDB_LABELS, labels)
            txn.put(LMDB_CHECKSUMS, checksums)
        env.close()
        (path / "lock.mdb").unlink()
        seal_raw_store(
            path,
            format="lmdb",
            format_version=2,
            records=records,
            classes=classes,
            data_files=("data.mdb",),
            index_digest=index_digest(labels, checksums),
        )

    def read_raw(self, path: Path) -> list[Record]:
        env = lmdb.open(str(path), subdir=True, readonly=True, lock=False)
        out = []
        with env.begin() as txn:
            for key, value in txn.cursor():
                if key in (LMDB_LABELS, LMDB_CHECKSUMS):
                    continue
                assert key == len(out).to_bytes(8, "big"), f"record {len(out)} is under {key!r}"
                label, width, height, crc, key_len = LMDB_HEADER.unpack_from(value)
                end = LMDB_HEADER.size + key_len
                name = value[LMDB_HEADER.size : end].decode("utf-8", "surrogateescape")
                out.append(Record(name, label, value[end:], width, height, crc))
            assert txn.get(LMDB_LABELS) + txn.get(LMDB_CHECKSUMS) == b"".join(_index_arrays(out))
        env.close()
        return out


class TestHDF5(BackendSuite):
    backend_name = "hdf5"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        path.mkdir()
        keys = [r.key.encode("utf-8", "surrogateescape") for r in records]
        index = {
            "offsets": np.cumsum([0] + [len(r.data) for r in records], dtype=np.uint64),
            "key_offsets": np.cumsum([0] + [len(k) for k in keys], dtype=np.uint64),
            "labels": np.array([r.label for r in records], np.int32),
            "widths": np.array([r.width for r in records], np.uint32),
            "heights": np.array([r.height for r in records], np.uint32),
            "checksums": np.array([r.checksum for r in records], np.uint32),
        }
        with h5py.File(path / "data.h5", "w") as f:
            f["images"] = np.frombuffer(b"".join(r.data for r in records), np.uint8)
            f["keys"] = np.frombuffer(b"".join(keys), np.uint8)
            for name, array in index.items():
                f[name] = array
            f.attrs["seqstore_format"] = "hdf5"
            f.attrs["seqstore_format_version"] = 2
        seal_raw_store(
            path,
            format="hdf5",
            format_version=2,
            records=records,
            classes=classes,
            data_files=("data.h5",),
            index_digest=index_digest(*(a.tobytes() for a in index.values())),
        )

    def read_raw(self, path: Path) -> list[Record]:
        with h5py.File(path / "data.h5", "r") as f:
            a = {name: f[name][()] for name in f}
            assert (f.attrs["seqstore_format"], f.attrs["seqstore_format_version"]) == ("hdf5", 2)
        images, keys, off, key_off = (
            a["images"].tobytes(),
            a["keys"].tobytes(),
            a["offsets"],
            a["key_offsets"],
        )
        return [
            Record(
                keys[key_off[i] : key_off[i + 1]].decode("utf-8", "surrogateescape"),
                int(a["labels"][i]),
                images[off[i] : off[i + 1]],
                int(a["widths"][i]),
                int(a["heights"][i]),
                int(a["checksums"][i]),
            )
            for i in range(len(a["labels"]))
        ]


class TestFolder(BackendSuite):
    backend_name = "folder"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        for name in classes:
            (path / name).mkdir(parents=True)
        for r in records:
            (path / r.key).write_bytes(r.data)  # keys are "<class>/<file>"

    def read_raw(self, path: Path) -> list[Record]:
        classes = sorted(p.name for p in path.iterdir() if p.is_dir())
        out = []
        for label, name in enumerate(classes):
            for file in sorted((path / name).rglob("*")):
                data = file.read_bytes()
                width, height = Image.open(io.BytesIO(data)).size
                key = file.relative_to(path).as_posix()
                out.append(Record.make(key, label, data, width, height))
        return sorted(out, key=lambda r: r.key)


class _Sharded:
    """The suite on sharded stores of the format: its writer cuts a shard every 12 KB (about
    4 shards of the suite's 37 records); raw stores are shards of the format's raw layout
    under a manifest that lists them (seqstore/backends/sharded.py)."""

    writer_options = {"shard_bytes": 12_000}
    raw_cuts = (0, 10, 10, 25, 37)  # shard 1 is empty: every record of it skipped

    @pytest.fixture(autouse=True)
    def _shards(self) -> None:
        writer = get_backend(self.backend_name).writer_cls  # type: ignore[attr-defined]
        if writer is None or not writer.data_files:
            pytest.skip(
                f"'{self.backend_name}' stores are never sharded: "  # type: ignore[attr-defined]
                "their records are in no data files of their own"
            )

    def reader_type(self, backend: type[Backend]) -> type[Reader]:
        return ShardedReader

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        path.mkdir()
        shards = []
        for i, (a, b) in enumerate(zip(self.raw_cuts[:-1], self.raw_cuts[1:], strict=True)):
            name = f"shard-{i:05d}"
            super().write_raw(path / name, records[a:b], classes)  # type: ignore[misc]
            m = json.loads((path / name / "seqstore.json").read_text())
            shards.append(
                Shard(
                    name=name,
                    start=a,
                    num_records=b - a,
                    total_bytes=m["total_bytes"],
                    data_files=m["data_files"],
                    index_digest=m["index_digest"],
                    digest=m["digest"],
                )
            )
        write_manifest(
            path,
            Manifest(
                format=self.backend_name,  # type: ignore[attr-defined]
                format_version=2,
                num_records=len(records),
                total_bytes=sum(len(r.data) for r in records),
                classes=list(classes),
                provenance=Provenance(seqstore_version=seqstore.__version__),
                index_digest=index_digest(*(s.index_digest.encode() for s in shards)),
                shards=shards,
            ),
        )

    def read_raw(self, path: Path) -> list[Record]:
        manifest = json.loads((path / "seqstore.json").read_text())
        assert manifest["data_files"] == {}
        out: list[Record] = []
        for shard in manifest["shards"]:
            assert shard["start"] == len(out)
            part = super().read_raw(path / shard["name"])  # type: ignore[misc]
            assert len(part) == shard["num_records"]
            assert shard["total_bytes"] == sum(len(r.data) for r in part)
            out += part
        assert manifest["num_records"] == len(out) and len(manifest["shards"]) > 1
        return out


class TestShardedLMDB(_Sharded, TestLMDB):
    pass


class TestShardedHDF5(_Sharded, TestHDF5):
    pass


class TestHDF5OverS3(OverS3, TestHDF5):
    pass


class TestLMDBOverS3(OverS3, TestLMDB):
    pass


class TestShardedLMDBOverS3(OverS3, TestShardedLMDB):
    pass


class TestShardedHDF5OverS3(OverS3, TestShardedHDF5):
    pass


class TestShardedFolder(_Sharded, TestFolder):
    pass


class TestFolderOverS3(OverS3, TestFolder):
    pass

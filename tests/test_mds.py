"""MosaicML Streaming's MDS shards read in place, without the streaming package: shards
written by MDSWriter itself (plain and compressed, with hashes), through the conformance
suite on a local disk and from the S3 test server, and the one-line refusals of what
seqstore does not read."""

from __future__ import annotations

import importlib.util
import json
import pickle
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from PIL import Image

import seqstore
from seqstore import Loader
from seqstore.errors import ConfigError, CorruptStoreError
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.backend import BackendSuite, OverS3
from seqstore.testing.data import make_records
from seqstore.testing.peers import mds_writer

if importlib.util.find_spec("streaming") is None:
    pytest.skip("mosaicml-streaming is not installed", allow_module_level=True)
MDSWriter = mds_writer()  # installed but not importable is an error, not a skip


@pytest.fixture(autouse=True)
def _index_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSTORE_INDEX_DIR", str(tmp_path_factory.mktemp("index")))


def write_mds(
    path: Path,
    records: Sequence[Record],
    columns: dict[str, str] | None = None,
    **options: object,
) -> None:
    """``records`` as MDS shards of about 4 KB (several shards), by MDSWriter."""
    columns = columns or {"image": "bytes", "label": "int"}
    with MDSWriter(out=str(path), columns=columns, size_limit=4000, **options) as writer:
        for r in records:
            writer.write({"image": r.data, "label": r.label})


def shard_keys(path: Path, records: Sequence[Record]) -> list[Record]:
    """``records`` with the keys the reader gives: shard name and number in it."""
    index = json.loads((path / "index.json").read_text())
    out, i = [], 0
    for shard in index["shards"]:
        name = (shard["zip_data"] or shard["raw_data"])["basename"]
        for k in range(shard["samples"]):
            r = records[i]
            out.append(Record.make(f"{name}#{k}", r.label, r.data, r.width, r.height))
            i += 1
    return out


class TestMDS(BackendSuite):
    backend_name = "mds"
    options: dict[str, object] = {"hashes": ["sha1", "xxh64"]}

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        del classes
        write_mds(path, records, **self.options)
        self.path = path

    def expected(self, records: Sequence[Record]) -> list[Record]:
        return shard_keys(self.path, records)


class TestMDSOverS3(OverS3, TestMDS):
    pass


class TestMDSCompressed(TestMDS):
    """Shards compressed with zstd: unpacked whole on first use, their hashes checked."""

    options = {"hashes": ["sha1"], "compression": "zstd"}


def test_columns_in_another_order_and_encodings(tmp_path: Path) -> None:
    """A label before the image, a jpeg column of files opened with PIL (their bytes as
    stored), an int32 label, and a Loader epoch with workers."""
    records = [r for r in make_records(30, seed=4) if r.key.endswith(".JPEG")]
    (tmp_path / "jpg").mkdir()
    columns = {"cls": "int32", "img": "jpeg", "note": "str"}
    with MDSWriter(out=str(tmp_path / "mds"), columns=columns, size_limit=3000) as writer:
        for i, r in enumerate(records):
            file = tmp_path / "jpg" / f"{i}.jpg"
            file.write_bytes(r.data)
            writer.write({"cls": r.label, "img": Image.open(file), "note": "x" * i})
    reader = seqstore.open(tmp_path / "mds")
    assert reader.manifest.format == "mds" and reader.classes == []
    got = reader.read_block(0, len(reader))
    assert [(g.data, g.label) for g in got] == [(r.data, r.label) for r in records]
    indices, labels, _ = collect_epoch(
        Loader(tmp_path / "mds", batch_size=4, image_size=32, num_workers=2, with_indices=True)
    )
    assert sorted(indices) == list(range(len(records)))
    assert labels == [records[i].label for i in indices]


def test_raw_pixels_and_pickles_are_refused_with_one_line(tmp_path: Path) -> None:
    r = make_records(3, seed=1)
    with MDSWriter(out=str(tmp_path / "pil"), columns={"image": "pil", "label": "int"}) as w:
        for x in r:
            w.write({"image": Image.new("RGB", (4, 4)), "label": x.label})
    with pytest.raises(ConfigError, match=r"'image' .* raw pixels \(pil\).*encoded"):
        seqstore.open(tmp_path / "pil")
    with MDSWriter(out=str(tmp_path / "pkl"), columns={"image": "pkl", "label": "int"}) as w:
        for x in r:  # MDS stores a bytes object as it is, whatever the encoding
            w.write({"image": bytearray(x.data), "label": x.label})
    with pytest.raises(ConfigError, match="pickled.*allow_pickle=True"):
        seqstore.open(tmp_path / "pkl", image_field="image")
    reader = seqstore.open(tmp_path / "pkl", allow_pickle=True)
    assert [g.data for g in reader.read_block(0, 3)] == [x.data for x in r]
    assert pickle.loads(pickle.dumps(reader.manifest)).num_records == 3


def test_several_integer_columns_are_listed(tmp_path: Path) -> None:
    r = make_records(2)
    cols = {"image": "bytes", "label": "int", "other": "int"}
    with MDSWriter(out=str(tmp_path / "m"), columns=cols) as writer:
        for x in r:
            writer.write({"image": x.data, "label": x.label, "other": 7})
    with pytest.raises(ConfigError, match=r"label field .*image \(bytes\), label \(int\), other"):
        seqstore.open(tmp_path / "m")
    assert seqstore.open(tmp_path / "m", label_field="other").labels().tolist() == [7, 7]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqstore", *args], capture_output=True, text=True, check=False
    )


def test_a_shard_whose_hash_fails_is_named(tmp_path: Path) -> None:
    records = make_records(20, seed=2)
    write_mds(tmp_path / "m", records, hashes=["sha1", "xxh64"])
    n = len(json.loads((tmp_path / "m" / "index.json").read_text())["shards"])
    assert n > 2
    ok = _cli("info", str(tmp_path / "m"), "--verify")
    assert ok.returncode == 0, ok.stderr
    assert f"verify: {n} of {n} files match their stored hash" in ok.stdout
    shard = tmp_path / "m" / "shard.00002.mds"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0x10  # a byte of the last image, same size
    shard.write_bytes(bytes(data))
    bad = _cli("info", str(tmp_path / "m"), "--verify")
    assert bad.returncode == 1
    assert f"verify: {n - 1} of {n} files match their stored hash" in bad.stdout
    assert "corrupt: shard.00002.mds" in bad.stdout
    # Without hashes there is nothing to check, and info says so.
    write_mds(tmp_path / "plain", records)
    plain = _cli("info", str(tmp_path / "plain"), "--verify")
    assert plain.returncode == 0 and "nothing to check" in plain.stdout


def test_a_compressed_shard_whose_hash_fails_is_refused_as_it_is_unpacked(tmp_path: Path) -> None:
    write_mds(tmp_path / "m", make_records(8, seed=2), hashes=["sha1"], compression="zstd")
    shard = tmp_path / "m" / "shard.00000.mds.zstd"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptStoreError, match=r"shard.00000.mds.zstd' fails its sha1 hash"):
        seqstore.open(tmp_path / "m")


def test_a_shard_missing_or_cut_short_is_one_line(tmp_path: Path) -> None:
    write_mds(tmp_path / "m", make_records(20, seed=2))
    shard = tmp_path / "m" / "shard.00001.mds"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CorruptStoreError, match=r"shard.00001.mds' is \d+ bytes, not the \d+"):
        seqstore.open(tmp_path / "m")
    shard.unlink()
    with pytest.raises(CorruptStoreError, match=r"lacks its data file 'shard.00001.mds'"):
        seqstore.open(tmp_path / "m")

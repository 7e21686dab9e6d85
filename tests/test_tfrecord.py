"""TFRecord files of tf.train.Example images read in place, without TensorFlow: files
written by the tfrecord package's writer, in TF's ImageNet layout and in TFDS's, read
through the conformance suite on a local disk and from the S3 test server."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

import seqstore
from seqstore import Loader
from seqstore.errors import ConfigError, CorruptStoreError
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.backend import BackendSuite, OverS3
from seqstore.testing.data import make_records

tfrecord = pytest.importorskip("tfrecord")
pytest.importorskip("crc32c")

CUTS = (0, 19, 37)  # not a multiple of the 4 classes: a label off by a file shows


@pytest.fixture(autouse=True)
def _index_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSTORE_INDEX_DIR", str(tmp_path_factory.mktemp("index")))


def write_files(
    path: Path, records: Sequence[Record], cuts: Sequence[int] = CUTS, *, tfds: bool = False
) -> list[str]:
    """``records`` as TFRecord files written by the tfrecord package: TF's ImageNet layout
    (``train-NNNNN-of-MMMMM``, ``image/encoded``, ``image/class/label`` from 1, and the
    image's size as two more int64 features), or TFDS's (``image``, ``label``)."""
    path.mkdir(parents=True)
    names = []
    for n, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        name = (
            f"imagenet-train.tfrecord-{n:05d}-of-{len(cuts) - 1:05d}"
            if tfds
            else (f"train-{n:05d}-of-{len(cuts) - 1:05d}")
        )
        writer = tfrecord.TFRecordWriter(str(path / name))
        for r in records[a:b]:
            if tfds:
                writer.write({"image": (r.data, "byte"), "label": (r.label, "int")})
            else:
                writer.write(
                    {
                        "image/encoded": (r.data, "byte"),
                        "image/class/label": (r.label + 1, "int"),
                        "image/height": (r.height, "int"),
                        "image/width": (r.width, "int"),
                        "image/format": (b"JPEG", "byte"),
                    }
                )
        writer.close()
        names.append(name)
    return names


class TestTFRecord(BackendSuite):
    """TFDS's layout: labels as stored."""

    backend_name = "tfrecord"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        del classes
        self.names = write_files(path, records, tfds=True)

    def expected(self, records: Sequence[Record]) -> list[Record]:
        out = []
        for n, (a, b) in enumerate(zip(CUTS[:-1], CUTS[1:], strict=True)):
            name = f"imagenet-train.tfrecord-{n:05d}-of-00002"
            out += [
                Record.make(f"{name}#{i - a}", r.label, r.data, r.width, r.height)
                for i, r in zip(range(a, b), records[a:b], strict=True)
            ]
        return out


class TestTFRecordOverS3(OverS3, TestTFRecord):
    pass


def test_tf_imagenet_layout_with_an_offset(tmp_path: Path) -> None:
    records = make_records(30, classes=4, seed=2)
    write_files(tmp_path / "tf", records, (0, 12, 30))
    raw = seqstore.open(tmp_path / "tf")
    assert raw.manifest.format == "tfrecord"
    assert raw.labels().tolist() == [r.label + 1 for r in records]  # as stored
    reader = seqstore.open(tmp_path / "tf", label_offset=-1)
    got = reader.read_block(0, 30)
    assert [(g.data, g.label) for g in got] == [(r.data, r.label) for r in records]
    indices, labels, _ = collect_epoch(
        Loader(
            tmp_path / "tf",
            reader_options={"label_offset": -1},
            batch_size=8,
            image_size=32,
            num_workers=2,
            with_indices=True,
            block_mb=0.02,
            shuffle_buffer=16,
        )
    )
    assert sorted(indices) == list(range(30))
    assert labels == [records[i].label for i in indices]


def test_a_damaged_record_is_one_line_naming_it(tmp_path: Path) -> None:
    records = make_records(6, seed=5)
    (name,) = write_files(tmp_path / "tf", records, (0, 6), tfds=True)
    seqstore.open(tmp_path / "tf")  # the table is made and kept
    file = tmp_path / "tf" / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0x40  # a bit of a record's image, same size
    before = file.stat()
    file.write_bytes(bytes(data))
    # Damaged in place with its times kept: the kept table still stands for it, and the
    # check as the record is read is what finds it.
    os.utime(file, ns=(before.st_atime_ns, before.st_mtime_ns))
    reader = seqstore.open(tmp_path / "tf")
    with pytest.raises(CorruptStoreError, match=r"record \d+ of TFRecord file .* CRC-32C"):
        reader.read_block(0, 6)
    # Scanned afresh (another index), the damage is found as the table is made.
    with pytest.raises(CorruptStoreError, match=r"TFRecord file .* record \d+ .*CRC-32C"):
        seqstore.open(tmp_path / "tf", index_dir=tmp_path / "fresh")


def test_fields_that_cannot_be_told_are_listed(tmp_path: Path) -> None:
    r = make_records(2)
    (tmp_path / "tf").mkdir()
    writer = tfrecord.TFRecordWriter(str(tmp_path / "tf" / "a.tfrecord"))
    for x in r:
        writer.write({"one": (x.data, "byte"), "two": (x.data, "byte"), "y": (x.label, "int")})
    writer.close()
    with pytest.raises(ConfigError, match=r"image feature .*one \(bytes\), two \(bytes\)"):
        seqstore.open(tmp_path / "tf")
    reader = seqstore.open(tmp_path / "tf", image_field="two")
    assert [g.data for g in reader.read_block(0, 2)] == [x.data for x in r]
    assert reader.labels().tolist() == [x.label for x in r]


def test_cli_convert_takes_the_readers_options(tmp_path: Path) -> None:
    """``--reader-option label_offset=-1``, as docs/formats.md shows it for TF's ImageNet."""
    from seqstore.cli import main

    records = make_records(12, classes=4, seed=2)
    write_files(tmp_path / "tf", records, (0, 5, 12))
    dst = tmp_path / "out.lmdb"
    argv = ["convert", str(tmp_path / "tf"), str(dst), "--format", "lmdb", "-q"]
    assert main([*argv, "--reader-option", "label_offset=-1"]) == 0
    out = seqstore.open(dst)
    assert sorted((r.data, r.label) for r in out.read_block(0, 12)) == sorted(
        (r.data, r.label) for r in records
    )
    assert main(["info", str(tmp_path / "tf"), "--reader-option", "label_offset=-1"]) == 0
    assert main([*argv, "--overwrite", "--reader-option", "label_offset"]) == 2

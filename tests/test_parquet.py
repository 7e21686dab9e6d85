"""Parquet files read in place, as Hugging Face datasets writes them: files written by
datasets itself (Image and ClassLabel features), read through the conformance suite on a
local disk and from the S3 test server."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import seqstore
from seqstore import Loader
from seqstore.errors import ConfigError
from seqstore.imaging.header import probe
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.backend import CLASSES, BackendSuite, OverS3
from seqstore.testing.data import make_records

datasets = pytest.importorskip("datasets")

SHARD_BYTES = 20_000


def cuts(records: Sequence[Record], shard_bytes: int = SHARD_BYTES) -> list[int]:
    """Where seqstore's writer starts a new file: once the last holds ``shard_bytes`` of
    images (one image at least)."""
    out, held = [0], 0
    for i, r in enumerate(records):
        if held and held + len(r.data) > shard_bytes:
            out.append(i)
            held = 0
        held += len(r.data)
    return [*out, len(records)]


def write_parquet(
    path: Path, records: Sequence[Record], classes: Sequence[str], bounds: Sequence[int]
) -> None:
    """``records`` as datasets writes a split to the Hub: ``data/train-NNNNN-of-MMMMM.parquet``
    with an ``Image`` and a ``ClassLabel`` feature, written by ``Dataset.to_parquet``."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))}
    )
    (path / "data").mkdir(parents=True)
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = records[a:b]
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": r.data, "path": None} for r in part],
                "label": [r.label for r in part],
            },
            features=features,
        )
        name = f"train-{n:05d}-of-{len(bounds) - 1:05d}.parquet"
        ds.to_parquet(str(path / "data" / name), batch_size=8)  # row groups of 8 rows


class TestParquet(BackendSuite):
    """Files cut where seqstore's writer (``shard_bytes``) cuts them, so that the raw files
    and the written ones hold the same records under the same keys."""

    backend_name = "parquet"
    writer_options = {"shard_bytes": SHARD_BYTES}

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        write_parquet(path, records, classes, cuts(records))

    def read_raw(self, path: Path) -> list[Record]:
        files = sorted(str(p) for p in (path / "data").glob("*.parquet"))
        ds = datasets.load_dataset("parquet", data_files=files, split="train")
        assert isinstance(ds.features["image"], datasets.Image)
        ds = ds.cast_column("image", datasets.Image(decode=False))
        out = []
        bounds = cuts([Record.make("", 0, row["image"]["bytes"], 1, 1) for row in ds])
        for i, row in enumerate(ds):
            n = int(np.searchsorted(bounds, i, side="right")) - 1
            key = f"data/train-{n:05d}-of-{len(bounds) - 1:05d}.parquet#{i - bounds[n]}"
            data = row["image"]["bytes"]
            info = probe(data, key)
            out.append(Record.make(key, row["label"], data, info.width, info.height))
        return out

    def expected(self, records: Sequence[Record]) -> list[Record]:
        bounds = cuts(records)
        out = []
        for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            name = f"data/train-{n:05d}-of-{len(bounds) - 1:05d}.parquet"
            out += [
                Record.make(f"{name}#{i - a}", r.label, r.data, r.width, r.height)
                for i, r in zip(range(a, b), records[a:b], strict=True)
            ]
        return out


class TestParquetOverS3(OverS3, TestParquet):
    pass


def test_class_names_come_from_the_class_label_and_an_epoch_covers_every_row(
    tmp_path: Path,
) -> None:
    records = make_records(40, classes=4, seed=8)
    write_parquet(tmp_path / "hf", records, CLASSES, (0, 40))
    reader = seqstore.open(tmp_path / "hf")
    assert reader.manifest.format == "parquet" and reader.classes == CLASSES
    indices, labels, _ = collect_epoch(
        Loader(
            tmp_path / "hf",
            batch_size=8,
            image_size=32,
            num_workers=2,
            with_indices=True,
            block_mb=0.02,
            shuffle_buffer=16,
        )
    )
    assert sorted(indices) == list(range(40))
    assert labels == [records[i].label for i in indices]


def test_a_file_without_an_image_column_is_one_line(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]})
    (tmp_path / "t").mkdir()
    ds.to_parquet(str(tmp_path / "t" / "x.parquet"))
    with pytest.raises(ConfigError, match=r"cannot tell the image column .*text \(string\)"):
        seqstore.open(tmp_path / "t")


def test_a_folder_converted_to_parquet_loads_in_datasets_with_its_features(
    tmp_path: Path,
) -> None:
    from seqstore.cli import main
    from seqstore.testing import make_image_folder

    images = make_image_folder(tmp_path / "images", classes=3, per_class=8, max_side=48)
    out = tmp_path / "hf"
    assert main(["convert", str(images), str(out), "--format", "parquet", "-q"]) == 0
    folder = seqstore.open(images)
    files = sorted(str(p) for p in (out / "data").glob("*.parquet"))
    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert ds.features["label"].names == folder.classes
    ds = ds.cast_column("image", datasets.Image(decode=False))
    got = sorted((row["image"]["bytes"], row["label"]) for row in ds)
    assert got == sorted((r.data, r.label) for r in folder.read_block(0, len(folder)))
    back = seqstore.open(out)
    assert back.manifest.format == "parquet" and back.classes == folder.classes


def save_to_disk(path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
    """``records`` as ``Dataset.save_to_disk`` writes them, in 3 Arrow files."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": r.data, "path": None} for r in records],
            "label": [r.label for r in records],
        },
        features=features,
    )
    ds.save_to_disk(str(path), num_shards=3)


class TestSavedToDisk(BackendSuite):
    """The directory of ``Dataset.save_to_disk``: its Arrow files, in state.json's order."""

    backend_name = "arrow"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        save_to_disk(path, records, classes)
        self.path = path

    def expected(self, records: Sequence[Record]) -> list[Record]:
        state = json.loads((self.path / "state.json").read_text())
        names = [f["filename"] for f in state["_data_files"]]
        out, i = [], 0
        for name in names:
            n = len(datasets.Dataset.from_file(str(self.path / name)))
            for k in range(n):
                r = records[i]
                out.append(Record.make(f"{name}#{k}", r.label, r.data, r.width, r.height))
                i += 1
        return out


class TestSavedToDiskOverS3(OverS3, TestSavedToDisk):
    pass


def test_a_saved_dataset_has_its_class_names_and_loads_an_epoch(tmp_path: Path) -> None:
    records = make_records(30, classes=4, seed=8)
    save_to_disk(tmp_path / "saved", records, CLASSES)
    reader = seqstore.open(tmp_path / "saved")
    assert reader.manifest.format == "arrow" and reader.classes == list(CLASSES)
    indices, labels, _ = collect_epoch(
        Loader(tmp_path / "saved", batch_size=4, image_size=32, num_workers=2, with_indices=True)
    )
    assert sorted(indices) == list(range(30))
    assert labels == [records[i].label for i in indices]

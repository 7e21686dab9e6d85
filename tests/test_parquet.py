"""Parquet files read in place, as Hugging Face datasets writes them: files written by
datasets itself (Image and ClassLabel features), read through the conformance suite on a
local disk and from the S3 test server."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

import seqstore
from seqstore import Loader
from seqstore.errors import ConfigError
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.backend import CLASSES, BackendSuite, OverS3
from seqstore.testing.data import make_records

datasets = pytest.importorskip("datasets")

CUTS = (0, 19, 37)  # not a multiple of the 4 classes: a label off by a file shows


def write_parquet(
    path: Path, records: Sequence[Record], classes: Sequence[str], cuts: Sequence[int] = CUTS
) -> None:
    """``records`` as datasets writes a split to the Hub: ``data/train-NNNNN-of-MMMMM.parquet``
    with an ``Image`` and a ``ClassLabel`` feature, written by ``Dataset.to_parquet``."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(classes))}
    )
    (path / "data").mkdir(parents=True)
    for n, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        part = records[a:b]
        ds = datasets.Dataset.from_dict(
            {
                "image": [{"bytes": r.data, "path": None} for r in part],
                "label": [r.label for r in part],
            },
            features=features,
        )
        name = f"train-{n:05d}-of-{len(cuts) - 1:05d}.parquet"
        ds.to_parquet(str(path / "data" / name), batch_size=8)  # row groups of 8 rows


class TestParquet(BackendSuite):
    backend_name = "parquet"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        write_parquet(path, records, classes)

    def expected(self, records: Sequence[Record]) -> list[Record]:
        out = []
        for n, (a, b) in enumerate(zip(CUTS[:-1], CUTS[1:], strict=True)):
            name = f"data/train-{n:05d}-of-00002.parquet"
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

"""litdata's chunks read in place, without the litdata package: chunks written by
``litdata.optimize`` itself, of dict items (stored by litdata as an Arrow footer) and of
tuple items (stored as samples), through the conformance suite on a local disk and from the
S3 test server; and the one-line refusals of what seqstore does not read."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import seqstore
from seqstore import Loader
from seqstore.errors import ConfigError
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.backend import BackendSuite, OverS3
from seqstore.testing.data import make_records
from seqstore.testing.peers import litdata_optimize

if importlib.util.find_spec("litdata") is None:
    pytest.skip("litdata is not installed", allow_module_level=True)
optimize = litdata_optimize()  # installed but not importable is an error, not a skip


@pytest.fixture(autouse=True)
def _index_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEQSTORE_INDEX_DIR", str(tmp_path_factory.mktemp("index")))


class Items:
    """litdata's ``fn``: record ``i`` as an item of one shape (picklable, for its workers)."""

    def __init__(self, records: Sequence[Record], shape: str) -> None:
        self.records, self.shape = [(r.data, r.label) for r in records], shape

    def __call__(self, i: int) -> Any:
        data, label = self.records[i]
        if self.shape == "dict":
            return {"image": data, "label": label}
        if self.shape == "tuple":
            return (data, label)
        return {"image": Image.open(io.BytesIO(data)), "label": label}  # litdata's "pil"


# litdata.optimize takes seconds (it starts worker processes): each dataset is written once
# per test session and copied.
_written: dict[tuple[str, tuple[bytes, ...]], Path] = {}


def write_chunks(path: Path, records: Sequence[Record], shape: str = "dict") -> None:
    """``records`` as litdata chunks of about 4 KB, written by ``litdata.optimize``."""
    key = (shape, tuple(r.data for r in records))
    if key not in _written:
        out = Path(tempfile.mkdtemp(prefix="litdata-")) / "data"
        optimize(
            fn=Items(records, shape),
            inputs=list(range(len(records))),
            output_dir=str(out),
            chunk_bytes=4000,
            num_workers=1,
        )
        _written[key] = out
    shutil.copytree(_written[key], path)


def chunk_keys(path: Path, records: Sequence[Record]) -> list[Record]:
    """``records`` with the keys the reader gives: chunk name and number in it."""
    index = json.loads((path / "index.json").read_text())
    out, i = [], 0
    for chunk in index["chunks"]:
        for k in range(chunk["chunk_size"]):
            r = records[i]
            out.append(Record.make(f"{chunk['filename']}#{k}", r.label, r.data, r.width, r.height))
            i += 1
    return out


class TestLitdata(BackendSuite):
    """Dict items: litdata keeps them as an Arrow file at the end of each chunk."""

    backend_name = "litdata"
    shape = "dict"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        del classes
        write_chunks(path, records, self.shape)
        self.path = path

    def expected(self, records: Sequence[Record]) -> list[Record]:
        return chunk_keys(self.path, records)


class TestLitdataOverS3(OverS3, TestLitdata):
    pass


class TestLitdataSamples(TestLitdata):
    """Tuple items: kept as samples in the chunk's sample table (fields ``0`` and ``1``)."""

    shape = "tuple"


class TestLitdataSamplesOverS3(OverS3, TestLitdataSamples):
    pass


def test_the_arrow_footer_and_the_samples_are_both_what_litdata_wrote(tmp_path: Path) -> None:
    records = make_records(12, seed=6)
    for shape in ("dict", "tuple"):
        write_chunks(tmp_path / shape, records, shape)
    chunk = sorted((tmp_path / "dict").glob("chunk-*.bin"))[0].read_bytes()
    assert chunk.endswith(b"LDARW01\0")  # the layout this test means to cover
    assert (
        not sorted((tmp_path / "tuple").glob("chunk-*.bin"))[0].read_bytes().endswith(b"LDARW01\0")
    )
    for shape in ("dict", "tuple"):
        indices, labels, _ = collect_epoch(
            Loader(tmp_path / shape, batch_size=4, image_size=32, num_workers=2, with_indices=True)
        )
        assert sorted(indices) == list(range(12))
        assert labels == [records[i].label for i in indices]


def test_pixels_are_refused_with_one_line(tmp_path: Path) -> None:
    records = [r for r in make_records(6, seed=1) if r.key.endswith(".png")]
    write_chunks(tmp_path / "pil", records, "pil")
    with pytest.raises(ConfigError, match=r"'image' .* raw pixels \(pil\)"):
        seqstore.open(tmp_path / "pil")


def test_fields_that_cannot_be_told_are_listed(tmp_path: Path) -> None:
    out = tmp_path / "two"
    optimize(fn=_two_images, inputs=[0, 1], output_dir=str(out), chunk_bytes=1 << 20, num_workers=1)
    with pytest.raises(ConfigError, match=r"image field .*a \(bytes\), b \(bytes\)"):
        seqstore.open(out)
    reader = seqstore.open(out, image_field="b")
    assert [g.data for g in reader.read_block(0, 2)] == [r.data for r in _RECORDS[2:4]]


_RECORDS = make_records(4, seed=9)


def _two_images(i: int) -> dict[str, Any]:
    return {"a": _RECORDS[i].data, "b": _RECORDS[i + 2].data, "label": i}

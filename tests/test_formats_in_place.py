"""The formats people already hold, made from the same 1000 real photos
(../shared/data/imagen200) by each project's own writer, read in place by seqstore with no
``backend=``: the same bytes and labels as the folder, a Loader epoch that covers every
record once on 1 and on 2 ranks, and conversions to LMDB and HDF5 that hold the folder's
records. Each epoch also resumes exactly. Skips cleanly without ../shared/data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import seqstore
from seqstore import Loader
from seqstore.convert import convert
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.peers import litdata_optimize, mds_writer

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagen200"


@pytest.fixture(scope="module")
def photos() -> tuple[list[Record], list[str]]:
    if not ROOT.is_dir():
        pytest.skip("../shared/data is not present")
    folder = seqstore.open(ROOT)
    return folder.read_block(0, len(folder)), folder.classes


def _webdataset(path: Path, records: list[Record], classes: list[str]) -> None:
    wds = pytest.importorskip("webdataset")
    path.mkdir()
    with wds.ShardWriter(str(path / "train-%06d.tar"), maxsize=30e6) as sink:
        for i, r in enumerate(records):
            sink.write({"__key__": f"{i:06d}", "jpg": r.data, "cls": r.label})


def _parquet(path: Path, records: list[Record], classes: list[str]) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": r.data, "path": None} for r in records],
            "label": [r.label for r in records],
        },
        features=features,
    )
    (path / "data").mkdir(parents=True)
    ds.to_parquet(str(path / "data" / "train-00000-of-00001.parquet"))


def _saved(path: Path, records: list[Record], classes: list[str]) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": r.data, "path": None} for r in records],
            "label": [r.label for r in records],
        },
        features=features,
    )
    ds.save_to_disk(str(path), num_shards=2)


def _tfrecord(path: Path, records: list[Record], classes: list[str]) -> None:
    tfrecord = pytest.importorskip("tfrecord")
    path.mkdir()
    for n in range(2):
        writer = tfrecord.TFRecordWriter(str(path / f"train-{n:05d}-of-00002"))
        for r in records[n::2]:
            writer.write(
                {"image/encoded": (r.data, "byte"), "image/class/label": (r.label + 1, "int")}
            )
        writer.close()


def _mds(path: Path, records: list[Record], classes: list[str]) -> None:
    """As MDS's ImageNet examples write it: each photo opened with PIL into a ``jpeg``
    column (MDS keeps the file's bytes), shards of 16 MB, with hashes."""
    try:
        writer = mds_writer()
    except ImportError:
        pytest.skip("mosaicml-streaming is not installed")
    from PIL import Image

    columns = {"image": "jpeg", "label": "int"}
    with writer(out=str(path), columns=columns, size_limit=1 << 24, hashes=["xxh64"]) as out:
        for r in records:
            with Image.open(ROOT / r.key) as image:
                out.write({"image": image, "label": r.label})


def _photo(key_label: tuple[str, int]) -> dict[str, object]:
    from PIL import Image

    return {"image": Image.open(ROOT / key_label[0]), "label": key_label[1]}


def _litdata(path: Path, records: list[Record], classes: list[str]) -> None:
    """As litdata's docs write images: PIL images (litdata keeps a JPEG file's bytes)."""
    try:
        optimize = litdata_optimize()
    except ImportError:
        pytest.skip("litdata is not installed")
    inputs = [(r.key, r.label) for r in records]
    optimize(fn=_photo, inputs=inputs, output_dir=str(path), chunk_bytes="16MB", num_workers=2)


WRITERS: dict[str, tuple[Callable[[Path, list[Record], list[str]], None], dict[str, int]]] = {
    "webdataset": (_webdataset, {}),
    "parquet": (_parquet, {}),
    "arrow": (_saved, {}),
    "tfrecord": (_tfrecord, {"label_offset": -1}),
    "mds": (_mds, {}),
    "litdata": (_litdata, {}),
}


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_each_format_reads_in_place_as_the_folder(
    fmt: str,
    photos: tuple[list[Record], list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEQSTORE_INDEX_DIR", str(tmp_path / "index"))
    records, classes = photos
    write, options = WRITERS[fmt]
    path = tmp_path / fmt
    write(path, records, classes)
    reader = seqstore.open(path, **options)
    assert reader.manifest.format == fmt and len(reader) == len(records)
    expected = sorted((r.data, r.label) for r in records)
    assert sorted((r.data, r.label) for r in reader.read_block(0, len(reader))) == expected

    # The encoded bytes as they are read (transform="none"): the order, coverage and resume
    # are the reading's; decoding these photos is the same whichever format held them.
    opts = dict(
        batch_size=50, transform="none", num_workers=2, with_indices=True, reader_options=options
    )
    one = collect_epoch(Loader(path, **opts))[0]
    assert sorted(one) == list(range(len(records)))
    ranks = [collect_epoch(Loader(path, rank=r, world_size=2, **opts))[0] for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(records) // 2
    assert sorted(ranks[0] + ranks[1]) == list(range(len(records)))

    # An epoch stopped after 3 batches resumes exactly where it stopped.
    loader = Loader(path, seed=4, **opts)
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    state = loader.state_dict()
    del it
    resumed = Loader(path, seed=4, **opts)
    resumed.load_state_dict(state)
    got = [int(i) for batch in head + list(resumed) for i in batch[2]]
    assert got == collect_epoch(Loader(path, seed=4, **opts))[0]

    for to in ("lmdb", "hdf5"):
        convert(
            path, tmp_path / to, format=to, check="header", progress=False, reader_options=options
        )
        out = seqstore.open(tmp_path / to)
        assert sorted((r.data, r.label) for r in out.read_block(0, len(out))) == expected

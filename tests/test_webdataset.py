"""WebDataset shards read in place: shards written by webdataset's own TarWriter, read
through the conformance suite on a local disk and from the S3 test server, and a Loader
epoch and its exact resume over them."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import seqstore
from seqstore import Loader
from seqstore.errors import ConfigError, CorruptStoreError
from seqstore.imaging.header import probe
from seqstore.records import Record
from seqstore.testing import collect_epoch
from seqstore.testing.backend import BackendSuite, OverS3
from seqstore.testing.data import make_records
from seqstore.testing.s3server import S3Server

wds = pytest.importorskip("webdataset")

SHARD_CUTS = (0, 15, 15, 37)  # three shards, the second one empty


@pytest.fixture(autouse=True)
def _index_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Member tables go under the test's own directory, not the user's cache.
    monkeypatch.setenv("SEQSTORE_INDEX_DIR", str(tmp_path_factory.mktemp("index")))


def _ext(record: Record) -> str:
    return record.key.rsplit(".", 1)[-1].lower()


def write_shards(path: Path, records: Sequence[Record], cuts: Sequence[int] = SHARD_CUTS) -> None:
    """``records`` as WebDataset shards written by webdataset's TarWriter: sample
    ``{i:09d}`` (the key seqstore's writer gives) holds the image under its own extension
    and the label as ``cls``."""
    path.mkdir(parents=True)
    for n, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        with wds.TarWriter(str(path / f"train-{n:06d}.tar")) as sink:
            for i in range(a, b):
                r = records[i]
                sink.write({"__key__": f"{i:09d}", _ext(r): r.data, "cls": r.label})


class TestWebDataset(BackendSuite):
    backend_name = "webdataset"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        del classes  # shards record no class names
        write_shards(path, records)

    def read_raw(self, path: Path) -> list[Record]:
        shards = sorted(str(p) for p in path.glob("*.tar"))
        out = []
        for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
            image = next(v for k, v in sample.items() if k in ("jpg", "png", "webp"))
            info = probe(image, sample["__key__"])
            label = int(sample["cls"]) if "cls" in sample else -1
            out.append(Record.make(sample["__key__"], label, image, info.width, info.height))
        return out

    def expected(self, records: Sequence[Record]) -> list[Record]:
        # Keys are the samples'; checksums are computed as records are read.
        return [
            Record.make(f"{i:09d}", r.label, r.data, r.width, r.height)
            for i, r in enumerate(records)
        ]


class TestWebDatasetOverS3(OverS3, TestWebDataset):
    """The same shards in object storage: listed under their prefix, their member tables
    made by one pass, each block one ranged GET."""


@pytest.fixture
def shards(tmp_path: Path) -> tuple[Path, list[Record]]:
    records = make_records(60, classes=5, seed=4)
    write_shards(tmp_path / "wds", records, (0, 25, 60))
    return tmp_path / "wds", records


def test_open_recognises_shards_and_one_tar_file(shards: tuple[Path, list[Record]]) -> None:
    path, records = shards
    reader = seqstore.open(path)
    assert reader.manifest.format == "webdataset" and len(reader) == 60
    assert reader.shard_bounds.tolist() == [0, 25, 60]
    one = seqstore.open(path / "train-000001.tar")
    assert [r.data for r in one.read_block(0, len(one))] == [r.data for r in records[25:]]


def test_loader_epoch_covers_every_sample_once_and_resumes_exactly(
    shards: tuple[Path, list[Record]],
) -> None:
    path, records = shards
    opts = dict(batch_size=8, image_size=32, shuffle_buffer=24, block_mb=0.02, seed=3)
    indices, labels, _ = collect_epoch(Loader(path, num_workers=2, with_indices=True, **opts))
    assert sorted(indices) == list(range(60))
    assert [r.label for r in records] == [labels[indices.index(i)] for i in range(60)]
    loader = Loader(path, num_workers=2, with_indices=True, **opts)
    it = iter(loader)
    first = [next(it) for _ in range(3)]
    state = loader.state_dict()
    del it
    again = Loader(path, num_workers=2, with_indices=True, **opts)
    again.load_state_dict(state)
    rest = list(again)
    got = [int(i) for batch in first + rest for i in batch[2]]
    assert got == indices


def test_the_member_table_is_kept_and_made_again_for_a_changed_shard(
    shards: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    path, records = shards
    index = Path(os.environ["SEQSTORE_INDEX_DIR"])
    seqstore.open(path)
    kept = sorted(index.iterdir())
    assert len(kept) == 2
    stamps = [p.stat().st_mtime_ns for p in kept]
    seqstore.open(path)
    assert [p.stat().st_mtime_ns for p in sorted(index.iterdir())] == stamps
    write_shards(tmp_path / "other", records[:3], (0, 3))
    (tmp_path / "other" / "train-000000.tar").replace(path / "train-000000.tar")
    reader = seqstore.open(path)
    assert len(reader) == 3 + 35 and len(list(index.iterdir())) == 3


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_fields_labels_and_bad_shards_are_one_line(tmp_path: Path) -> None:
    r = make_records(2)
    jpg = r[0].data  # the reader tells images by their bytes, not their extension
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.tar").write_bytes(_tar([("k1.jpg", jpg), ("k1.png", r[1].data)]))
    with pytest.raises(ConfigError, match="several images .*image_field="):
        seqstore.open(tmp_path / "two")
    reader = seqstore.open(tmp_path / "two", image_field="jpg")
    assert reader.read_block(0, 1)[0].data == jpg and reader.labels().tolist() == [-1]

    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "a.tar").write_bytes(
        _tar([("k1.jpg", jpg), ("k1.json", b'{"label": 7}'), ("k2.jpg", jpg), ("k2.json", b"{}")])
    )
    with pytest.raises(CorruptStoreError, match="no integer 'label' in its json member"):
        seqstore.open(tmp_path / "json", label_field="label")

    whole = _tar([("k1.jpg", jpg), ("k1.cls", b"3"), ("k2.jpg", jpg), ("k2.cls", b"4")])
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "a.tar").write_bytes(whole[:1000])
    with pytest.raises(CorruptStoreError, match="a.tar.*(cut short|damaged)"):
        seqstore.open(tmp_path / "cut")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "a.tar").write_bytes(whole)
    assert seqstore.open(tmp_path / "ok").labels().tolist() == [3, 4]


def test_convert_to_lmdb_keeps_bytes_and_labels(
    shards: tuple[Path, list[Record]], tmp_path: Path
) -> None:
    from seqstore.convert import convert

    path, records = shards
    convert(path, tmp_path / "out", format="lmdb", progress=False, shuffle=False)
    out = seqstore.open(tmp_path / "out")
    got = out.read_block(0, len(out))
    assert [(g.data, g.label) for g in got] == [(r.data, r.label) for r in records]


def test_labels_are_kept_apart(shards: tuple[Path, list[Record]]) -> None:
    path, records = shards
    assert np.array_equal(seqstore.open(path).labels(), [r.label for r in records])


def test_a_folder_converted_to_webdataset_is_read_back_by_webdataset_itself(
    tmp_path: Path,
) -> None:
    from seqstore.cli import main
    from seqstore.testing import make_image_folder

    images = make_image_folder(tmp_path / "images", classes=3, per_class=8, max_side=48)
    out = tmp_path / "wds"
    argv = ["convert", str(images), str(out), "--format", "webdataset", "--shard-mb", "0.01"]
    assert main([*argv, "-q"]) == 0
    shards = sorted(out.glob("*.tar"))
    assert len(shards) > 1  # --shard-mb cut the tar files, not a sharded store
    folder = seqstore.open(images)
    source = sorted((r.data, r.label) for r in folder.read_block(0, len(folder)))
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False))
    ext = ("jpg", "png", "webp")
    got = [(next(v for k, v in s.items() if k in ext), int(s["cls"])) for s in samples]
    assert sorted(got) == source
    back = seqstore.open(out)
    assert back.manifest.format == "webdataset" and back.classes == folder.classes
    assert sorted((r.data, r.label) for r in back.read_block(0, len(back))) == source


def test_brace_patterns_expand_as_webdataset_expands_them() -> None:
    from seqstore.io.patterns import expand_braces, split_pattern

    assert expand_braces("train-{000008..000011}.tar") == [
        f"train-{i:06d}.tar" for i in range(8, 12)
    ]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    assert split_pattern("s3://bucket/wds/train-{0..3}.tar") == (
        "s3://bucket/wds",
        "train-{0..3}.tar",
    )
    assert split_pattern("/data/wds") is None


def test_a_brace_pattern_or_a_glob_names_the_shards_to_read(
    shards: tuple[Path, list[Record]], s3_server: S3Server
) -> None:
    path, records = shards
    first = seqstore.open(path / "train-{000000..000000}.tar")
    assert first.manifest.format == "webdataset" and len(first) == 25
    both = seqstore.open(path / "train-{000000..000001}.tar")
    assert [r.data for r in both.read_block(0, 60)] == [r.data for r in records]
    assert len(seqstore.open(path / "train-*1.tar")) == 35
    with pytest.raises(seqstore.NotAStoreError, match="no file matches"):
        seqstore.open(path / "val-{000000..000003}.tar")
    # The same pattern at a URL.
    bucket = f"wds-{os.getpid()}-{len(records)}"
    s3_server.make_bucket(bucket)
    fs = s3_server.filesystem()
    for tar in sorted(path.glob("*.tar")):
        fs.put_file(str(tar), f"s3://{bucket}/wds/{tar.name}")
    options = s3_server.storage_options()
    remote = seqstore.open(
        f"s3://{bucket}/wds/train-{{000001..000001}}.tar", storage_options=options
    )
    assert [r.data for r in remote.read_block(0, len(remote))] == [r.data for r in records[25:]]

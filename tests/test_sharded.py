"""Sharded stores: convert --shard-mb in parallel, what the store holds and what refuses it.

The sharded stores' conformance (read_block, labels, staging, layout) is in
test_backends.py; torchrun conversions are in test_distributed.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import seqstore
from seqstore.backends.sharded import reader as sharded_reader
from seqstore.cli import main
from seqstore.convert import convert
from seqstore.errors import BadImageError, CorruptStoreError, PartialStoreError
from seqstore.testing import make_image_folder
from seqstore.testing.epoch import collect_epoch
from seqstore.testing.shards import (
    held_image,
    layout,
    process_gone,
    staged_shards,
    staging_pid,
    wait_for,
)

# Images of at most 80 px are about 2 KB: shards of 25 KB hold 13 of the 60.
SHARD_MB = 0.025
ENV = {**os.environ, "PYTHONPATH": str(Path(seqstore.__file__).parents[1])}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images", classes=4, per_class=15, max_side=80)


def _content(path: Path) -> list[tuple[str, int, bytes]]:
    reader = seqstore.open(path)
    return [(r.key, r.label, r.data) for r in reader.read_block(0, len(reader))]


def _cli(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "seqstore", *map(str, args)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("fmt", ["lmdb", "hdf5"])
def test_shards_hold_the_unsharded_order_whatever_the_worker_count(
    images: Path, tmp_path: Path, fmt: str
) -> None:
    convert(images, tmp_path / "one", format=fmt, progress=False)
    for workers in (0, 1, 3):
        convert(
            images,
            tmp_path / f"w{workers}",
            format=fmt,
            shard_mb=SHARD_MB,
            workers=workers,
            progress=False,
        )
    expected = _content(tmp_path / "one")
    assert _content(tmp_path / "w0") == expected
    assert layout(tmp_path / "w0") == layout(tmp_path / "w1") == layout(tmp_path / "w3")
    assert _content(tmp_path / "w1") == _content(tmp_path / "w3") == expected
    reader = seqstore.open(tmp_path / "w3")
    m = reader.manifest
    # Shards of SHARD_MB over the source's mean record size: 25 KB / 1.9 KB = 13 records.
    per_shard = int(SHARD_MB * 1e6 // seqstore.open(images).manifest.mean_record_bytes)
    assert per_shard == 13 and m.provenance.options["records_per_shard"] == per_shard
    assert m.shards is not None and [s.num_records for s in m.shards] == [13, 13, 13, 13, 8]
    assert reader.shard_bounds.tolist() == [0, 13, 26, 39, 52, 60]
    assert m.total_bytes == seqstore.open(tmp_path / "one").manifest.total_bytes
    # Each shard is an ordinary store of the format, holding its slice of the records.
    alone = seqstore.open(tmp_path / "w3" / "shard-00002")
    assert type(alone) is seqstore.get_backend(fmt).reader_cls
    assert [(r.key, r.label, r.data) for r in alone.read_block(0, 13)] == expected[26:39]
    # A sharded store is a source like any other, and --overwrite replaces it like any other.
    convert(tmp_path / "w3", tmp_path / "back", format="hdf5", workers=2, progress=False)
    assert _content(tmp_path / "back") == expected
    convert(
        images, tmp_path / "back", format=fmt, shard_mb=SHARD_MB, overwrite=True, progress=False
    )
    assert layout(tmp_path / "back") == layout(tmp_path / "w0")
    convert(images, tmp_path / "w0", format=fmt, overwrite=True, progress=False)
    assert seqstore.open(tmp_path / "w0").manifest.shards is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back", "images", "one", "w0", "w1", "w3"]


def test_the_loader_reads_a_sharded_store_as_one(images: Path, tmp_path: Path) -> None:
    from seqstore import Loader

    convert(images, tmp_path / "s", format="hdf5", shard_mb=SHARD_MB, progress=False)
    loader = Loader(
        tmp_path / "s",
        batch_size=8,
        num_workers=2,
        transform="none",
        shuffle_buffer=10,
        block_mb=0.02,
        with_indices=True,
    )
    indices, labels, images_ = collect_epoch(loader)
    assert sorted(indices) == list(range(60))
    reader = seqstore.open(tmp_path / "s")
    assert labels == [reader.labels()[i] for i in indices]


def test_skipped_files_are_listed_as_an_unsharded_convert_lists_them(
    images: Path, tmp_path: Path
) -> None:
    (images / "class01" / "bad.JPEG").write_bytes(b"not an image")
    (images / "class03" / "empty.JPEG").write_bytes(b"")
    one = convert(images, tmp_path / "one", format="lmdb", on_error="skip", progress=False)
    report = convert(
        images,
        tmp_path / "s",
        format="lmdb",
        on_error="skip",
        shard_mb=SHARD_MB,
        workers=2,
        progress=False,
    )
    assert _content(tmp_path / "s") == _content(tmp_path / "one")
    assert report.skipped == one.skipped and len(report.skipped) == 2
    assert report.manifest.provenance.skipped == one.manifest.provenance.skipped
    with pytest.raises(BadImageError, match=r"(bad|empty)\.JPEG"):  # whichever comes first
        convert(images, tmp_path / "f", format="lmdb", shard_mb=SHARD_MB, workers=2, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "one", "s"]  # nothing left


def test_a_swapped_edited_or_missing_shard_is_refused(images: Path, tmp_path: Path) -> None:
    for seed in (0, 1):
        convert(
            images,
            tmp_path / f"s{seed}",
            format="hdf5",
            shard_mb=SHARD_MB,
            seed=seed,
            progress=False,
        )
    store = tmp_path / "s0"
    seqstore.open(store).check_index()
    shutil.rmtree(store / "shard-00001")
    shutil.copytree(tmp_path / "s1" / "shard-00001", store / "shard-00001")
    reader = seqstore.open(store)
    assert len(reader.read_block(0, 13)) == 13  # shard 0 is sound
    with pytest.raises(CorruptStoreError, match="shard-00001' is not the shard the manifest"):
        reader.read_block(10, 16)
    with pytest.raises(CorruptStoreError, match="is not the shard"):
        reader.check_index()
    shutil.rmtree(store / "shard-00003")
    with pytest.raises(CorruptStoreError, match="lacks its shard 'shard-00003'"):
        seqstore.open(store).read_block(40, 41)


def test_cli_convert_and_info_of_a_sharded_store(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["convert", str(images), str(tmp_path / "s"), "--format", "hdf5", "-q"]
    assert main([*argv, "--shard-mb", str(SHARD_MB), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "wrote 60 records" in out and "in 5 shards" in out
    assert main(["info", str(tmp_path / "s"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "shards: 5 hdf5 stores" in out and "60 of 60 records match" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "folder", "--shard-mb", "1"], "'folder' backend cannot write sharded"),
        (["--format", "hdf5", "--distributed"], "needs the environment torchrun sets"),
        (["--format", "hdf5", "--shard-mb", "0"], "shard_mb"),
    ],
)
def test_sharded_convert_errors_are_one_line(
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    assert main(["convert", str(images), str(tmp_path / "out"), *extra, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("seqstore: error:") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_read_handles_stay_bounded(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    convert(images, tmp_path / "s", format="hdf5", shard_mb=0.005, progress=False)
    reader = seqstore.open(tmp_path / "s")
    assert len(reader.shard_bounds) > 20
    monkeypatch.setattr(sharded_reader, "OPEN_SHARDS", 3)
    bounds = reader.shard_bounds.tolist()
    before = len(os.listdir("/proc/self/fd"))
    reader.read_block(0, bounds[3])  # 3 shards open
    three = len(os.listdir("/proc/self/fd"))
    records = [reader.read(i) for i in range(len(reader))]  # every shard, one after another
    assert three > before and len(os.listdir("/proc/self/fd")) == three
    assert [(r.key, r.label, r.data) for r in records] == _content(tmp_path / "s")


@pytest.mark.parametrize("kill", ["the convert", "a shard writer"])
def test_a_killed_sharded_convert_is_refused_and_resume_keeps_its_finished_shards(
    images: Path, tmp_path: Path, kill: str
) -> None:
    args = [images, "--format", "lmdb", "--shard-mb", SHARD_MB, "--workers", 2, "-q"]
    dst = tmp_path / "s"
    with held_image(sorted((images / "class02").glob("*.JPEG"))[3]) as held:
        held.release()
        convert(images, tmp_path / "ref", format="lmdb", shard_mb=SHARD_MB, progress=False)
        proc = _cli("convert", args[0], dst, *args[1:])
        # Every shard but the one that holds the held image finishes; that one waits.
        wait_for(lambda: len(staged_shards(dst)[0]) == 4, proc, "4 shards finished")
        wait_for(lambda: len(staged_shards(dst)[1]) == 1, proc, "the 5th shard began")
        waiting = staged_shards(dst)[1][0]
        writer_pid = staging_pid(waiting)
        finished = {p.name: seqstore.open(p).manifest.store_id for p in staged_shards(dst)[0]}
        if kill == "the convert":
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        else:
            os.kill(writer_pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 2
            assert err.strip().startswith("seqstore: error: a convert process (pid")
            assert "--resume" in err and "\n" not in err.strip()
        deadline = time.monotonic() + 10
        while not process_gone(writer_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(writer_pid)  # no shard writer outlives its convert
        with pytest.raises(PartialStoreError, match="killed before it finished.*--resume"):
            seqstore.open(dst)
        held.release()
        done = _cli("convert", args[0], dst, *args[1:], "--resume")
        out, err = done.communicate(timeout=120)
        assert done.returncode == 0, err
    assert "kept its 4 finished shard(s)" in out
    shards = seqstore.open(dst).manifest.shards or []
    final = {s.name: seqstore.open(dst / s.name).manifest.store_id for s in shards}
    assert all(final[name] == store_id for name, store_id in finished.items())
    assert layout(dst) == layout(tmp_path / "ref")
    assert _content(dst) == _content(tmp_path / "ref")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "ref", "s"]


def test_a_shard_cut_short_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    images = make_image_folder(tmp_path / "images", classes=4, per_class=60, max_side=80)
    source = seqstore.open(images)
    order = np.random.default_rng(0).permutation(len(source))
    held_key = source.keys[order[150]]  # type: ignore[attr-defined]
    dst = tmp_path / "s"
    # One shard of all 240 records; a checkpoint after each list of 64 checked records.
    args = [images, dst, "--format", "hdf5", "--shard-mb", 10, "--checkpoint-mb", 0.001, "-q"]
    with held_image(images / held_key) as held:
        held.release()
        convert(images, tmp_path / "ref", format="hdf5", shard_mb=10, progress=False)
        proc = _cli("convert", *args)

        def checkpointed() -> int:
            marks = list(
                dst.parent.glob(f".{dst.name}.seqstore-new-*/.shard-*/seqstore.progress.json")
            )
            return int(json.loads(marks[0].read_text())["records"]) if marks else 0

        wait_for(lambda: checkpointed() == 128, proc, "the checkpoint after 128 records")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        held.release()
        done = _cli("convert", *args, "--resume")
        out, err = done.communicate(timeout=120)
        assert done.returncode == 0, err
    assert "kept the 128 records of its last checkpoint" in out
    assert layout(dst) == layout(tmp_path / "ref")
    assert _content(dst) == _content(tmp_path / "ref")


def test_a_distributed_convert_is_not_written_to_a_url(
    images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["convert", str(images), "s3://bucket/train.h5", "--format", "hdf5", "--distributed"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "seqstore: error: a distributed convert writes to a local file system only, not to "
        "'s3://bucket/train.h5'; convert to a path every rank sees, or leave out "
        "--distributed and give --shard-mb (a sharded store is uploaded shard by shard)"
    )

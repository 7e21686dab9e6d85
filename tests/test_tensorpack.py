"""LMDB files written by tensorpack's LMDBSerializer load and convert without loss."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import lmdb
import numpy as np
import pytest

import seqstore
from seqstore.convert import convert
from seqstore.errors import SeqstoreError
from seqstore.records import Record
from seqstore.testing.backend import BackendSuite, OverS3
from seqstore.testing.data import make_records

RECORDS = make_records(23, classes=5, seed=11)  # what make_tensorpack_file writes


@pytest.fixture(params=["pickle", "msgpack"])
def tp_file(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    make_tensorpack_file: Callable[[Path, str], Path],
) -> Path:
    return make_tensorpack_file(tmp_path / "ILSVRC-train.lmdb", request.param)


def test_tensorpack_file_reads_as_a_store(tp_file: Path) -> None:
    reader = seqstore.open(tp_file)
    assert reader.manifest.format == "tensorpack"
    got = reader.read_block(0, len(reader))
    assert [(r.data, r.label) for r in got] == [(r.data, r.label) for r in RECORDS]
    assert [(r.width, r.height) for r in got] == [(r.width, r.height) for r in RECORDS]
    assert reader.read_block(5, 9) == [reader.read(i) for i in range(5, 9)]


def test_tensorpack_to_hdf5_and_back_to_lmdb_is_lossless(tp_file: Path, tmp_path: Path) -> None:
    convert(tp_file, tmp_path / "h5", format="hdf5", progress=False)
    convert(tmp_path / "h5", tmp_path / "lmdb", format="lmdb", progress=False)
    for store in ("h5", "lmdb"):
        reader = seqstore.open(tmp_path / store)
        assert [(r.data, r.label) for r in reader.read_block(0, len(reader))] == [
            (r.data, r.label) for r in RECORDS
        ]


def test_old_unpadded_keys_read_in_keys_order(tmp_path: Path) -> None:
    msgpack = pytest.importorskip("msgpack")
    msgpack_numpy = pytest.importorskip("msgpack_numpy")

    path = tmp_path / "old.lmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 26)
    keys = [str(i).encode() for i in range(len(RECORDS))]  # '0', '1', ... '10' sorts before '2'
    with env.begin(write=True) as txn:
        for key, r in zip(keys, RECORDS, strict=True):
            dp = [np.frombuffer(r.data, np.uint8), r.label]
            txn.put(key, msgpack.dumps(dp, default=msgpack_numpy.encode, use_bin_type=True))
        txn.put(b"__keys__", msgpack.dumps(keys, use_bin_type=True))
    env.close()
    reader = seqstore.open(path)
    assert [r.data for r in reader.read_block(0, len(reader))] == [r.data for r in RECORDS]


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.lmdb"
    env = lmdb.open(str(path), subdir=False, map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", pickle.dumps([os.system, 0]))
        txn.put(b"__keys__", pickle.dumps([b"00000000"]))
    env.close()
    with pytest.raises(SeqstoreError, match="refusing to load posix.system"):
        seqstore.open(path).read_block(0, 1)


class TestTensorpackReadOnly(BackendSuite):
    """The suite, read-only: the store is an LMDBSerializer file written with lmdb and pickle,
    as tensorpack 0.10+ writes it (zero-padded keys, a pickled ``__keys__`` list)."""

    backend_name = "tensorpack"

    def write_raw(self, path: Path, records: Sequence[Record], classes: Sequence[str]) -> None:
        del classes  # tensorpack files record no class names
        env = lmdb.open(str(path), subdir=False, map_size=1 << 28, meminit=False)
        keys = [f"{i:08d}".encode("ascii") for i in range(len(records))]
        with env.begin(write=True) as txn:
            for key, r in zip(keys, records, strict=True):
                txn.put(key, pickle.dumps([np.frombuffer(r.data, np.uint8), r.label], -1))
            txn.put(b"__keys__", pickle.dumps(keys, -1))
        env.close()

    def expected(self, records: Sequence[Record]) -> list[Record]:
        # Keys are the file's own; checksums are computed as records are read.
        return [
            Record.make(f"{i:08d}", r.label, r.data, r.width, r.height)
            for i, r in enumerate(records)
        ]


class TestTensorpackOverS3(OverS3, TestTensorpackReadOnly):
    """The same file in object storage: read through LMDB's page parser, with ranged GETs
    of its values, and no local copy."""


def test_info_says_what_wrote_the_file_and_that_nothing_can_be_verified(
    tp_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from seqstore.cli import main

    assert main(["info", str(tp_file), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "written: not by seqstore (tensorpack data, read in place)" in out
    assert "verify: nothing to check: tensorpack data stores no checksums" in out
    assert "records match" not in out


def test_a_file_tensorpack_holds_open_in_the_process_still_opens(
    tmp_path: Path, make_tensorpack_file: Callable[[Path, str], Path]
) -> None:
    """Users switching over run the old DataFlow beside seqstore in one process."""
    from tensorpack.dataflow import LMDBSerializer

    path = make_tensorpack_file(tmp_path / "ILSVRC-train.lmdb", "pickle")  # this process's
    flow = LMDBSerializer.load(str(path), shuffle=False)
    flow.reset_state()
    first = next(iter(flow))
    reader = seqstore.open(path)
    assert reader.manifest.format == "tensorpack" and len(reader) == 23
    assert reader.read_block(0, 1)[0].data == bytes(first[0])

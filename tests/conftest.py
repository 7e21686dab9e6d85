from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

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

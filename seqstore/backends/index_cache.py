"""Where the tables that formats without an index get (a tar shard's members, a TFRecord
file's records) are kept between runs: one file per data file, named by the file's name and
identity, so that a file changed or replaced is scanned again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..io.ranges import Source

__all__ = ["default_index_dir", "index_path"]


def default_index_dir() -> Path:
    """Where tables are kept unless told: ``$SEQSTORE_INDEX_DIR``, else
    ``~/.cache/seqstore/index``."""
    env = os.environ.get("SEQSTORE_INDEX_DIR")
    return Path(env) if env else Path.home() / ".cache" / "seqstore" / "index"


def index_path(source: Source, index_dir: Path, what: str) -> tuple[Path, str]:
    """The file that keeps the table ``what`` of ``source`` in ``index_dir``, and the
    identity the table must carry to be the one of this version of the file."""
    identity = f"{what}\0{source.name}\0{source.identity}"
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    tail = "".join(c if c.isalnum() or c in "._-" else "_" for c in source.name[-40:])
    return index_dir / f"{digest}-{tail}.npz", identity

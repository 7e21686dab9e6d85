"""Where the tables that formats without an index get (a tar shard's members, a TFRecord
file's records) are kept between runs: one file per data file, named by the file's name and
identity, so that a file changed or replaced is scanned again and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..io.ranges import Source

__all__ = ["default_index_dir", "index_path", "kept_table"]


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


def kept_table(
    source: Source, index_dir: Path, what: str, make: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The table ``what`` of ``source`` (named arrays): from ``index_dir`` where it was kept
    for this version of the file, else made by ``make`` and kept there (atomically, by a
    rename; a directory that cannot be written only means the table is made again)."""
    path, identity = index_path(source, index_dir, what)
    tag = np.frombuffer(identity.encode("utf-8", "surrogateescape"), np.uint8)
    try:
        with np.load(path) as z:
            if np.array_equal(z["identity"], tag):
                return {k: z[k] for k in z.files if k != "identity"}
    except (OSError, ValueError, KeyError):
        pass
    table = make()
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, identity=tag, **table)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except OSError:
        pass
    return table

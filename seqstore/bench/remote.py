"""The bench's object-storage room: the HDF5 store, read over a local S3 server.

:func:`s3_row` starts an S3-compatible server on 127.0.0.1 (see
:mod:`seqstore.testing.s3server`), uploads the bench's HDF5 store to it and says how the
Loader reaches it, so that the same store is measured from local disk and over S3, without
a cache: every block one ranged GET. Without the ``s3`` extra or a server, the row is left
out with a note saying why.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..testing.s3server import S3Server

__all__ = ["S3_ROW", "s3_row"]

S3_ROW = "hdf5 over s3"


def s3_row(stores: dict[str, Path], notes: list[str]) -> tuple[dict[str, Any], S3Server] | None:
    """The measurement's options (``url``, ``storage_options``) that read
    ``stores["hdf5"]`` from a local S3 server just started, and the server; or None, with
    the reason appended to ``notes``. The server stops at :meth:`S3Server.close`, or when
    this process exits."""
    if "hdf5" not in stores:
        notes.append(f"{S3_ROW}: needs the 'hdf5' format in --formats")
        return None
    try:
        import s3fs  # noqa: F401
    except ImportError:
        notes.append(f"{S3_ROW}: left out, s3fs is not installed (pip install 'seqstore[s3]')")
        return None
    from ..io.object import ObjectStore
    from ..testing.s3server import S3ServerUnavailable, start_s3_server
    from ..upload import upload_store

    try:
        server = start_s3_server()
    except S3ServerUnavailable as exc:
        notes.append(f"{S3_ROW}: left out, no S3 server could start ({exc})")
        return None
    atexit.register(server.close)
    server.make_bucket("bench")
    url = "s3://bench/train.h5"
    options = server.storage_options()
    upload_store(stores["hdf5"], ObjectStore(url, options), overwrite=True)
    notes.append(
        f"{S3_ROW}: the hdf5 store from a {server.kind} S3 server on 127.0.0.1, sharing the "
        "CPU with the loader, no cache_dir: every block one ranged GET"
    )
    return {"url": url, "storage_options": options}, server

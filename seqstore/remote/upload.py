"""Stores written to a URL: converted on a local disk, then uploaded whole.

Object storage has no rename, so a store cannot appear at a URL all at once the way a local
one does. What stands in for it is the order of the uploads: the data files first, the
manifest last. A store's manifest is what makes it a store (readers refuse a URL without
one, and name an unfinished upload as such), so at any instant the URL holds the whole old
store, nothing readable, or the whole new store. Replacing a store (``overwrite``) deletes
its manifest first, so that no reader pairs the old manifest with new data.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from ..errors import StoreExistsError
from ..manifest import MANIFEST_NAME
from .location import Remote

__all__ = ["check_destination", "staging_path", "upload_store"]


def staging_path(url: str, staging_dir: str | os.PathLike[str] | None) -> Path:
    """Where a store bound for ``url`` is written before its upload: the same path for the
    same URL, so that ``convert --resume`` finds what a killed conversion left."""
    root = Path(staging_dir) if staging_dir is not None else Path(tempfile.gettempdir())
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "store"
    return root / "seqstore-upload" / f"{digest}-{name}"


def check_destination(remote: Remote, *, overwrite: bool) -> None:
    """Refuse to convert to a URL that holds a store, unless ``overwrite``; before any
    work is done.

    Raises
    ------
    StoreExistsError
        A store (its manifest) is at the URL and ``overwrite`` is False.
    """
    if not overwrite and remote.exists(remote.join(MANIFEST_NAME)):
        raise StoreExistsError(
            f"'{remote.url}' already holds a store; pass --overwrite (overwrite=True) to replace it"
        )


def upload_store(local: Path, remote: Remote, *, overwrite: bool) -> None:
    """Upload the finished store at ``local`` to ``remote``: data files, then the manifest.

    Parameters
    ----------
    local
        A store directory whose writer finished.
    remote
        The destination.
    overwrite
        Replace a store at the destination (its manifest is deleted first).

    Raises
    ------
    StoreExistsError
        A store is at the destination and ``overwrite`` is False.
    RemoteError
        An upload failed past the retries; the destination then holds no manifest.
    """
    manifest_url = remote.join(MANIFEST_NAME)
    if remote.exists(manifest_url):
        if not overwrite:
            raise StoreExistsError(
                f"'{remote.url}' was created by someone else while this store was written; "
                "pass --overwrite (overwrite=True) to replace it"
            )
        remote.rm(manifest_url)
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)
    for path in files:
        remote.put_file(path, remote.join(path.relative_to(local).as_posix()))
    remote.put_file(local / MANIFEST_NAME, manifest_url)
    remote.invalidate()

"""Stores written to a URL: converted on a local disk, then uploaded whole.

Object storage has no rename, so a store cannot appear at a URL all at once the way a local
one does. What stands in for it is the order of the uploads: the data files first, the
manifest last. A store's manifest is what makes it a store (readers refuse a URL without
one, and name an unfinished upload as such), so at any instant the URL holds the whole old
store, nothing readable, or the whole new store. Replacing a store (``overwrite``) deletes
its manifest first, so that no reader pairs the old manifest with new data, and once the new
manifest is up, the files the old one listed that the new store does not have (the shards
beyond its own, say): what a local overwrite removes with the old directory.

A sharded store's shards are uploaded one by one as a conversion finishes them
(:class:`StoreUpload`), each shard's data file before the shard's manifest, and the store's
manifest once all are up.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

from .errors import SeqstoreError, StoreExistsError
from .io.object import ObjectStore
from .manifest import MANIFEST_NAME, Manifest, parse_manifest

__all__ = ["StoreUpload", "check_destination", "staging_path", "upload_store"]


def staging_path(url: str, staging_dir: str | os.PathLike[str] | None) -> Path:
    """Where a store bound for ``url`` is written before its upload: the same path for the
    same URL, so that ``convert --resume`` finds what a killed conversion left."""
    root = Path(staging_dir) if staging_dir is not None else Path(tempfile.gettempdir())
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "store"
    return root / "seqstore-upload" / f"{digest}-{name}"


def check_destination(remote: ObjectStore, *, overwrite: bool) -> None:
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


class StoreUpload:
    """The upload of one store to ``remote``, in steps: shards as they are finished
    (:meth:`put_shard`), then the rest of the store with its manifest last (:meth:`finish`).

    The first upload replaces a store at the destination (``overwrite``) by deleting its
    manifest, or refuses one that appeared since the conversion began.

    Parameters
    ----------
    remote
        The destination.
    overwrite
        Replace a store at the destination.
    """

    def __init__(self, remote: ObjectStore, *, overwrite: bool) -> None:
        self.remote = remote
        self.overwrite = overwrite
        self.manifest_url = remote.join(MANIFEST_NAME)
        self._began = False
        self._done: set[str] = set()  # the shards uploaded, by name
        self._put: set[str] = set()  # every file uploaded, by its name under the store
        self._old: set[str] = set()  # the files of the store replaced, by name

    def _begin(self) -> None:
        if self._began:
            return
        if self.remote.exists(self.manifest_url):
            if not self.overwrite:
                raise StoreExistsError(
                    f"'{self.remote.url}' was created by someone else while this store was "
                    "written; pass --overwrite (overwrite=True) to replace it"
                )
            try:
                old = parse_manifest(bytes(self.remote.cat(self.manifest_url)), self.manifest_url)
            except SeqstoreError as exc:  # not a manifest this seqstore reads
                warnings.warn(
                    f"the files of the store replaced at '{self.remote.url}' are left in "
                    f"place: its manifest cannot be read ({exc})",
                    stacklevel=2,
                )
            else:
                self._old = _files_of(old)
            self.remote.rm(self.manifest_url)
        self._began = True

    def _put_file(self, local: Path, name: str) -> None:
        self.remote.put_file(local, self.remote.join(name))
        self._put.add(name)

    def _put_tree(self, directory: Path, prefix: str) -> None:
        """The files under ``directory`` as ``prefix/...``: in each directory its data files
        before its manifest, which vouches for them."""
        files = sorted(
            (p for p in directory.rglob("*") if p.is_file()),
            key=lambda p: (p.parent.as_posix(), p.name == MANIFEST_NAME, p.name),
        )
        for path in files:
            self._put_file(path, f"{prefix}/{path.relative_to(directory).as_posix()}".lstrip("/"))

    def put_shard(self, directory: Path) -> None:
        """Upload the finished shard ``directory`` (a ``shard-NNNNN`` of a sharded store)."""
        self._begin()
        self._put_tree(directory, directory.name)
        self._done.add(directory.name)

    def finish(self, local: Path) -> None:
        """Upload what of the finished store ``local`` :meth:`put_shard` did not, and its
        manifest last."""
        self._begin()
        for entry in sorted(local.iterdir()):
            if entry.name in self._done or entry.name == MANIFEST_NAME:
                continue
            if entry.is_dir():
                self._put_tree(entry, entry.name)
            else:
                self._put_file(entry, entry.name)
        self.remote.put_file(local / MANIFEST_NAME, self.manifest_url)
        for name in sorted(self._old - self._put - {MANIFEST_NAME}):
            url = self.remote.join(name)
            if self.remote.exists(url):
                self.remote.rm(url)
        self.remote.invalidate()


def _files_of(manifest: Manifest) -> set[str]:
    """The files a store's manifest lists, by name under the store: its data files, and
    each shard's data files and manifest; a name that would lead out of the store (``..``,
    a leading ``/``) is left out."""
    names = set(manifest.data_files)
    for shard in manifest.shards or ():
        names |= {f"{shard.name}/{name}" for name in (*shard.data_files, MANIFEST_NAME)}
    return {name for name in names if all(part not in ("", ".", "..") for part in name.split("/"))}


def upload_store(local: Path, remote: ObjectStore, *, overwrite: bool) -> None:
    """Upload the finished store at ``local`` to ``remote``: data files (and a sharded
    store's shards, each with its own manifest), then the store's manifest.

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
    StoreUpload(remote, overwrite=overwrite).finish(local)

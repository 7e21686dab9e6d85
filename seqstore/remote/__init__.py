"""Stores in object storage: ``s3://``, ``gs://``, ``http(s)://`` and any fsspec URL.

:func:`open_remote` is what :func:`seqstore.open` does with a URL: it fetches the store's
manifest, checks its data file, and returns the format's remote reader
(:class:`~seqstore.remote.hdf5.RemoteHDF5Reader`, which reads a block with one ranged GET,
or :class:`~seqstore.remote.lmdb.RemoteLMDBReader`, which reads a whole copy in the local
cache); for a sharded store, a :class:`~seqstore.remote.sharded.RemoteShardedReader` whose
shards are read by those. :func:`~seqstore.remote.upload.upload_store` puts a finished
local store at a URL, data first and manifest last. Requests retry transient failures with
backoff (:mod:`.location`); the optional local cache is :mod:`.cache`.

Needs fsspec and the filesystem of the URL's protocol: ``pip install 'seqstore[s3]'``
(fsspec + s3fs) for ``s3://``, ``gcsfs`` for ``gs://``, aiohttp for ``http(s)://``.
"""

from __future__ import annotations

import os
from typing import Any

from ..backends.reader import Reader, options_taken
from ..backends.sharded import shard_name
from ..errors import ConfigError, NotAStoreError, PartialStoreError
from ..manifest import MANIFEST_NAME, Manifest, parse_manifest
from .cache import ShardCache
from .location import Remote, RemoteFile, RetryPolicy

__all__ = [
    "Remote",
    "RemoteFile",
    "RetryPolicy",
    "ShardCache",
    "fetch_manifest",
    "format_reader",
    "make_cache",
    "open_remote",
]

# The data files of the formats a URL can hold, and the manifest of a sharded store's first
# shard (uploaded before the store's own), for telling an unfinished upload apart.
_DATA_FILES = ("data.h5", "data.mdb", f"{shard_name(0)}/{MANIFEST_NAME}")


def make_cache(
    cache_dir: str | os.PathLike[str] | None, cache_limit_gb: float | None
) -> ShardCache | None:
    """The shard cache of ``cache_dir`` holding at most ``cache_limit_gb`` (None: no
    limit), or None without a directory.

    Raises
    ------
    ConfigError
        A limit without a directory, or a limit that is not positive.
    """
    if cache_dir is None:
        if cache_limit_gb is not None:
            raise ConfigError("cache_limit_gb was given without cache_dir; give both, or neither")
        return None
    if cache_limit_gb is not None and cache_limit_gb <= 0:
        raise ConfigError(f"cache_limit_gb={cache_limit_gb} must be > 0 (or None: no limit)")
    limit = None if cache_limit_gb is None else int(cache_limit_gb * 1e9)
    return ShardCache(cache_dir, limit)


def open_remote(
    url: str,
    backend: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_gb: float | None = None,
    retry: RetryPolicy | None = None,
    **options: Any,
) -> Reader:
    """Open the store at ``url`` (see :func:`seqstore.open`).

    Parameters
    ----------
    url
        The store: ``s3://bucket/train.h5``, ``https://host/data/train.h5`` ...
    backend
        The format the store must be (default: whatever its manifest says).
    storage_options
        fsspec filesystem options (credentials, ``endpoint_url`` ...); default: the
        environment's (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL`` ...).
    cache_dir, cache_limit_gb
        A local cache of whole data files, and its size limit (see :mod:`.cache`).
    retry
        Retries of transient failures (default: :class:`RetryPolicy`'s).
    **options
        The reader's options (``readahead`` for LMDB).

    Raises
    ------
    NotAStoreError
        Nothing at ``url`` is a seqstore store.
    PartialStoreError
        The store's data is there but not its manifest: an upload that did not finish.
    RemoteError
        No such bucket, access denied, or the server unreachable past the retries.
    """
    remote = Remote(url, dict(storage_options or {}), retry or RetryPolicy())
    raw, manifest = fetch_manifest(remote)
    if backend is not None and backend != manifest.format:
        raise ConfigError(
            f"'{remote.url}' is a {manifest.format} store, not {backend}; leave out the backend "
            "to read it as what it is"
        )
    cache = make_cache(cache_dir, cache_limit_gb)
    if manifest.shards is None:
        return format_reader(remote, manifest, raw, cache, options)
    from .sharded import RemoteShardedReader

    if manifest.format == "lmdb" and cache is None:
        raise ConfigError(_LMDB_NEEDS_CACHE.format(url=remote.url))
    reader = RemoteShardedReader(
        remote.url, remote=remote, manifest=manifest, cache=cache, **options
    )
    if reader.shards:
        # Its first shard now, so that a shard missing or a wrong option is told at once.
        reader.shard(0)
    return reader


# The line that refuses an LMDB store at a URL without a cache.
_LMDB_NEEDS_CACHE = (
    "LMDB store '{url}' cannot be read in place from object storage (LMDB memory-maps its "
    "file); pass cache_dir= to download it whole into a local cache, or convert it to HDF5 "
    "(--format hdf5), whose blocks are read by ranged requests"
)


def fetch_manifest(remote: Remote) -> tuple[bytes, Manifest]:
    """The manifest of the store at ``remote``: as fetched, and parsed.

    Raises
    ------
    NotAStoreError
        Nothing there is a seqstore store.
    PartialStoreError
        The store's data (or its first shard) is there but not its manifest: an upload that
        did not finish.
    RemoteError
        No such bucket, access denied, or the server unreachable past the retries.
    """
    url = remote.url
    manifest_url = remote.join(MANIFEST_NAME)
    try:
        raw = bytes(remote.cat(manifest_url))
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower():
            raise remote.permanent("reading", manifest_url, exc) from None
        if any(remote.exists(remote.join(name)) for name in _DATA_FILES):
            raise PartialStoreError(
                f"store '{url}' is incomplete: its data is there but not its {MANIFEST_NAME} "
                "(an upload that did not finish); convert or upload it again with --overwrite"
            ) from None
        raise NotAStoreError(
            f"'{url}' does not exist or is not a seqstore store (no {MANIFEST_NAME} there); "
            "only seqstore's stores are read from URLs: convert your data with seqstore "
            "convert SRC URL"
        ) from None
    return raw, parse_manifest(raw, manifest_url)


def format_reader(
    remote: Remote,
    manifest: Manifest,
    raw: bytes,
    cache: ShardCache | None,
    options: dict[str, Any],
) -> Reader:
    """The remote reader of the store of one data file at ``remote``, whose manifest is
    ``manifest`` (fetched as ``raw``), with the reader's ``options``.

    Raises
    ------
    ConfigError
        An option the format's reader does not take, or a format not read from URLs.
    """
    url = remote.url
    with options_taken(f"the {manifest.format} reader of '{url}'", options):
        if manifest.format == "hdf5":
            from .hdf5 import RemoteHDF5Reader

            return RemoteHDF5Reader(url, remote=remote, manifest=manifest, cache=cache, **options)
        if manifest.format == "lmdb":
            from .lmdb import RemoteLMDBReader

            return RemoteLMDBReader(
                url, remote=remote, manifest=manifest, manifest_bytes=raw, cache=cache, **options
            )
    raise ConfigError(
        f"'{url}' is a {manifest.format} store, which seqstore cannot read from a URL; "
        "convert it to hdf5 (seqstore convert SRC URL --format hdf5)"
    )

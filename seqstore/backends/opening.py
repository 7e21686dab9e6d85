"""The one place that opens a store: location -> place -> manifest or sniff -> backend ->
reader (sharded or not).

Whatever the format and wherever the store is, :func:`open_store` (``seqstore.open``) goes
the same way:

1. the location becomes a :class:`~seqstore.io.places.Place`: a local path, or a URL with
   its ``storage_options``, retries and optional cache;
2. the place's manifest names the format; without one, a data file of a known format names
   a store that lost its manifest (or an upload that did not finish), and otherwise each
   sniffing backend is asked whether it recognises the data (a tensorpack LMDB file, an
   image folder);
3. the registry gives the backend, and the backend's reader reads the place, through a
   :class:`~seqstore.backends.sharded.ShardedReader` where the manifest lists shards.

A backend registered through the entry point reads from a URL with no code of its own for
that: its reader reads its files through the place it is given.
"""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigError, NotAStoreError, PartialStoreError
from ..io.cache import ShardCache
from ..io.object import ObjectStore
from ..io.patterns import split_pattern
from ..io.places import LocalPlace, ObjectPlace, Place, is_url
from ..io.retry import RetryPolicy
from ..manifest import MANIFEST_NAME, Manifest, is_store, parse_manifest
from .base import Backend, Reader
from .reader import options_taken
from .registry import data_file_names, get_backend, sniffing_backends
from .sharded import ShardedReader, shard_name
from .staging import read_store_manifest

__all__ = ["make_cache", "open_store", "place_for"]


def make_cache(
    cache_dir: str | os.PathLike[str] | None, cache_limit_gb: float | None
) -> ShardCache | None:
    """The cache of whole files in ``cache_dir`` holding at most ``cache_limit_gb`` (None:
    no limit), or None without a directory.

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


def place_for(
    location: str | os.PathLike[str],
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_gb: float | None = None,
    retry: RetryPolicy | None = None,
) -> Place:
    """The place of ``location``: a :class:`~seqstore.io.places.LocalPlace` for a path, an
    :class:`~seqstore.io.places.ObjectPlace` for a URL (see :func:`open_store`).

    Raises
    ------
    ConfigError
        Options of object storage given with a local path.
    """
    pattern = split_pattern(os.fspath(location))
    if pattern is not None:  # the files under a directory that a pattern names
        location = pattern[0]
    named = pattern[1] if pattern is not None else None
    if is_url(location):
        store = ObjectStore(
            os.fspath(location), dict(storage_options or {}), retry or RetryPolicy()
        )
        return ObjectPlace(store, make_cache(cache_dir, cache_limit_gb), named)
    given = [
        name
        for name, value in (
            ("storage_options", storage_options),
            ("cache_dir", cache_dir),
            ("cache_limit_gb", cache_limit_gb),
        )
        if value
    ]
    if given:
        raise ConfigError(
            f"{', '.join(given)} apply to stores at a URL (s3://, gs://, https:// ...), and "
            f"'{os.fspath(location)}' is a local path; leave them out, or give the store's URL"
        )
    return LocalPlace(location, named)


def open_store(
    path: str | os.PathLike[str],
    backend: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_gb: float | None = None,
    retry: RetryPolicy | None = None,
    **options: Any,
) -> Reader:
    """Open any readable store: seqstore's own, a tensorpack LMDB file, an image folder, or
    a third-party backend's, on a local disk or at a URL.

    Parameters
    ----------
    path
        The store's directory or file, or an image folder; or the URL of a store
        (``s3://bucket/train.h5``, ``gs://...``, ``https://...``, any fsspec URL).
    backend
        Force a backend instead of reading it from the manifest or recognising the data.
    storage_options
        For a URL: the fsspec filesystem's options (credentials, ``client_kwargs`` with an
        ``endpoint_url`` ...); by default the environment's (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` ...).
    cache_dir, cache_limit_gb
        For a URL: a local directory that keeps whole copies of the store's data files,
        and the most GB it holds (least recently used copies go first; None: no limit).
        Without it, every byte is read by ranged requests.
    retry
        For a URL: the retries of transient failures (default: :class:`RetryPolicy`'s).
    **options
        Passed to the backend's reader (for example ``labels=`` for a folder).

    Raises
    ------
    NotAStoreError
        Nothing at ``path`` is readable as a store.
    PartialStoreError
        The store's writer (or its upload) never finished.
    RemoteError
        A URL's bucket does not exist, access is denied, or its server stayed unreachable.
    """
    place = place_for(
        path,
        storage_options=storage_options,
        cache_dir=cache_dir,
        cache_limit_gb=cache_limit_gb,
        retry=retry,
    )
    manifest = None if place.pattern is not None else _manifest(place)
    if manifest is not None:
        if backend is not None and backend != manifest.format:
            raise ConfigError(
                f"'{place.where}' is a {manifest.format} store, not {backend}; leave out the "
                "backend to read it as what it is"
            )
        return _open(get_backend(manifest.format), place, manifest, options)
    if backend is not None:
        return _open(get_backend(backend), place, None, options)
    if place.pattern is not None and not place.files():
        raise NotAStoreError(f"no file matches '{place.where}'")
    orphans = [name for name in data_file_names() if place.pattern is None and place.exists(name)]
    if (
        place.local is None
        and place.pattern is None
        and not orphans
        and place.exists(f"{shard_name(0)}/{MANIFEST_NAME}")
    ):
        orphans = [shard_name(0)]
    if orphans and place.local is None:
        raise PartialStoreError(
            f"store '{place.where}' is incomplete: its data is there but not its "
            f"{MANIFEST_NAME} (an upload that did not finish); convert or upload it again "
            "with --overwrite"
        )
    if orphans:
        raise NotAStoreError(
            f"'{place.where}' holds a store's data ({orphans[0]}) but no {MANIFEST_NAME}: "
            "without its manifest the data cannot be checked or trusted; convert the source "
            "again"
        )
    for candidate in sniffing_backends():
        if (candidate.reads_urls or place.local is not None) and candidate.sniff(place):
            return _open(candidate, place, None, options)
    if place.local is None:
        raise NotAStoreError(
            f"'{place.where}' does not exist or is not a seqstore store (no {MANIFEST_NAME} "
            "there), a tensorpack LMDB file, WebDataset shards nor TFRecord files; convert your "
            "data with seqstore convert SRC URL"
        )
    raise NotAStoreError(
        f"'{place.where}' is neither a seqstore store, a tensorpack LMDB file, WebDataset "
        "shards, TFRecord files nor an image folder (a folder with one sub-folder of images "
        "per class)"
    )


def _manifest(place: Place) -> Manifest | None:
    """The manifest at ``place``, or None where there is none (other data, or nothing).

    Raises
    ------
    PartialStoreError
        A local store still being written, or whose writer was killed.
    NotAStoreError
        Nothing exists at a local path.
    RemoteError
        No such bucket, access denied, or the server unreachable past the retries.
    """
    if isinstance(place, ObjectPlace):
        url = place.store.join(MANIFEST_NAME)
        try:
            raw = place.read_bytes(MANIFEST_NAME)
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise place.store.permanent("reading", url, exc) from None
            return None
        return parse_manifest(raw, url)
    local = place.local
    if local is None:
        return None
    if not local.exists():
        # Finishes an interrupted replace (the store is there again), or names a killed
        # write, or says that nothing is there.
        read_store_manifest(local)
    if local.is_dir() and is_store(local):
        return read_store_manifest(local)
    return None


def _open(
    backend: type[Backend], place: Place, manifest: Manifest | None, options: dict[str, Any]
) -> Reader:
    hint = " (options like --labels are for image folders)" if place.local is not None else ""
    with options_taken(f"the {backend.name} reader of '{place.where}'", options, hint):
        if manifest is None or manifest.shards is None:
            return backend.open_reader(place, **options)
        sharded = ShardedReader(place, backend=backend, **options)
        if sharded.shards and place.local is None:
            # Its first shard now, so that a shard missing or a wrong option is told at once.
            sharded.shard(0)
        return sharded

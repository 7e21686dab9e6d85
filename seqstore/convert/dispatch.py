"""``convert()``: one store, a sharded one, or either staged locally and uploaded to a URL."""

from __future__ import annotations

import os
import shutil
from typing import Any

from ..backends import get_backend
from ..config import ConvertConfig, load_config
from ..errors import ConfigError, SeqstoreError
from ..io.places import is_url
from ..manifest import MANIFEST_NAME
from .sharded import convert_sharded
from .write import ConvertReport, convert_one

__all__ = ["convert"]


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    config: ConvertConfig | dict[str, Any] | None = None,
    **options: Any,
) -> ConvertReport:
    """Convert the store or image folder ``src`` into a new store at ``dst``.

    Parameters
    ----------
    src
        A seqstore store, a tensorpack LMDB file, an ImageFolder tree, or (with ``labels``)
        a flat validation folder.
    dst
        Directory of the new store.
    config, **options
        A :class:`~seqstore.config.ConvertConfig` (or dict), and/or its fields as keywords.
        With ``shard_mb`` or ``distributed`` the store is sharded and written in parallel
        (see :mod:`seqstore.convert.sharded`), unless the format's own files are shards of
        a size (WebDataset, Parquet): ``shard_mb`` is then their size.

    Returns
    -------
    ConvertReport

    Raises
    ------
    SeqstoreError
        Bad source, destination or option, or (with ``on_error="raise"``) a bad image; the
        destination is then removed, never left looking complete.
    """
    cfg = load_config(ConvertConfig, config, **options)
    if is_url(dst):
        if cfg.distributed:
            raise ConfigError(
                f"a distributed convert writes to a local file system only, not to '{dst}'; "
                "convert to a path every rank sees, or leave out --distributed and give "
                "--shard-mb (a sharded store is uploaded shard by shard)"
            )
        return _convert_to_url(src, os.fspath(dst), cfg)
    if cfg.storage_options:
        raise ConfigError(
            f"storage_options apply to a destination URL (s3://, gs:// ...), and '{dst}' is "
            "a local path; leave them out, or give the store's URL"
        )
    if sharded_store(cfg):
        return convert_sharded(src, dst, cfg)
    return convert_one(src, dst, cfg)


def sharded_store(cfg: ConvertConfig) -> bool:
    """Whether the conversion makes a sharded store: with ``shard_mb`` or ``distributed``,
    unless the format's own files are shards (``shard_mb`` is then their size)."""
    if cfg.distributed:
        return True
    return cfg.shard_mb is not None and not get_backend(cfg.format).writer_shards()


def _convert_to_url(src: str | os.PathLike[str], url: str, cfg: ConvertConfig) -> ConvertReport:
    """Convert into a local staging directory, then upload the finished store to ``url``
    (data files first, the manifest last: see :mod:`seqstore.upload`). A sharded
    store's shards are uploaded as they are finished, while the next ones are written."""
    from ..io.object import ObjectStore
    from ..upload import StoreUpload, check_destination, staging_path

    remote = ObjectStore(url, dict(cfg.storage_options))
    check_destination(remote, overwrite=cfg.overwrite)
    local = staging_path(remote.url, cfg.staging_dir)
    upload = StoreUpload(remote, overwrite=cfg.overwrite)
    # The staging path is this conversion's own: a finished store left there by a convert
    # whose upload failed is replaced.
    local_cfg = cfg.model_copy(update={"overwrite": True, "storage_options": {}})
    if sharded_store(cfg):
        try:
            report = convert_sharded(src, local, local_cfg, on_shard=upload.put_shard)
        except SeqstoreError as exc:
            raise type(exc)(f"{exc}; '{url}' holds no store (no {MANIFEST_NAME})") from None
    else:
        report = convert(src, local, local_cfg)
    try:
        upload.finish(local)
    except SeqstoreError as exc:
        raise type(exc)(
            f"{exc}; the finished store stays at '{local}' (copy it up, data files before "
            f"{MANIFEST_NAME}, or run the same convert again)"
        ) from None
    shutil.rmtree(local, ignore_errors=True)
    return report

"""The registry: backend names to backend classes, imported on first use.

One table, :data:`registry`, maps each name to a :class:`BackendEntry`: the class, or its
``"module:Class"`` path until first use, so that importing seqstore does not import lmdb or
h5py, and the pip extra that provides its dependency. Third-party backends register through
the ``seqstore.backends`` entry-point group in their package metadata::

    [project.entry-points."seqstore.backends"]
    zarr = "seqstore_zarr:ZarrBackend"
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import BackendNotFoundError, ConfigError, NotAStoreError
from ..manifest import MANIFEST_NAME, is_store, read_manifest
from .base import Backend, Reader
from .reader import is_local, options_taken
from .staging import read_store_manifest

__all__ = [
    "BackendEntry",
    "available_backends",
    "get_backend",
    "open_store",
    "register_backend",
    "registry",
]

ENTRY_POINT_GROUP = "seqstore.backends"


@dataclass(frozen=True)
class BackendEntry:
    """One row of the registry.

    Attributes
    ----------
    target : type of Backend, or str
        The backend class, or its ``"module:Class"`` path before first use.
    extra : str or None
        The pip extra of seqstore that installs the backend's dependency.
    sniff : bool
        Whether :func:`open_store` asks this backend to recognise data that carries no
        manifest (rows are asked in table order).
    data_files : tuple of str
        Names of the format's data files: a directory holding one but no manifest is a
        store that lost its manifest, not an image folder.
    """

    target: type[Backend] | str
    extra: str | None = None
    sniff: bool = False
    data_files: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        """The ``"module:Class"`` path of the backend."""
        if isinstance(self.target, str):
            return self.target
        return f"{self.target.__module__}:{self.target.__qualname__}"


_table: dict[str, BackendEntry] = {
    "lmdb": BackendEntry("seqstore.backends.lmdb:LMDBBackend", data_files=("data.mdb",)),
    "hdf5": BackendEntry("seqstore.backends.hdf5:HDF5Backend", data_files=("data.h5",)),
    "tensorpack": BackendEntry(
        "seqstore.backends.tensorpack:TensorpackBackend", extra="tensorpack", sniff=True
    ),
    "folder": BackendEntry("seqstore.backends.folder:FolderBackend", sniff=True),
}
#: A read-only view of the registry (entry-point plugins appear once a lookup has run).
registry: Mapping[str, BackendEntry] = MappingProxyType(_table)
_entry_points_loaded = False


def register_backend(name: str, backend: type[Backend] | str, *, overwrite: bool = False) -> None:
    """Make a backend available under ``name``.

    Parameters
    ----------
    name
        What users pass as ``backend=`` and ``--format``.
    backend
        The Backend subclass, or its ``"module:Class"`` path to import on first use.
    overwrite
        Replace a different backend already registered under ``name``. Registering the
        same backend again is allowed without it.

    Raises
    ------
    ValueError
        Another backend is registered under ``name`` and ``overwrite`` is False.
    """
    _load_entry_points()
    new = BackendEntry(backend)
    old = _table.get(name)
    if old is not None and old.path == new.path:
        if isinstance(backend, type):
            _table[name] = replace(old, target=backend)
        return
    if old is not None and not overwrite:
        raise ValueError(
            f"a backend named '{name}' is already registered ({old.path}); pass overwrite=True "
            f"to replace it with {new.path}"
        )
    _table[name] = new


def available_backends() -> list[str]:
    """Names of every registered backend, built-in and from entry points, sorted."""
    _load_entry_points()
    return sorted(_table)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``, imported if needed.

    Raises
    ------
    BackendNotFoundError
        No backend has that name, or its optional dependency is not installed.
    """
    _load_entry_points()
    try:
        entry = _table[name]
    except KeyError:
        known = ", ".join(sorted(_table))
        raise BackendNotFoundError(f"unknown backend '{name}'; choose one of: {known}") from None
    target = entry.target
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            hint = (
                f"pip install 'seqstore[{entry.extra}]'" if entry.extra else f"install '{exc.name}'"
            )
            raise BackendNotFoundError(
                f"backend '{name}' needs the package '{exc.name}', which is not installed; "
                f"run: {hint}"
            ) from None
        target = getattr(module, attr)
    if not (isinstance(target, type) and issubclass(target, Backend)):
        raise BackendNotFoundError(f"backend '{name}' is {target!r}, not a seqstore Backend class")
    _table[name] = replace(entry, target=target)
    return target


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _table.setdefault(ep.name, BackendEntry(ep.value))


def open_store(
    path: str | os.PathLike[str],
    backend: str | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit_gb: float | None = None,
    **options: Any,
) -> Reader:
    """Open any readable store: seqstore's own, a tensorpack LMDB file, or an image folder,
    on a local disk or at a URL.

    Parameters
    ----------
    path
        The store's directory or file, or an image folder; or the URL of a store
        (``s3://bucket/train.h5``, ``gs://...``, ``https://...``, any fsspec URL: see
        :mod:`seqstore.remote`).
    backend
        Force a backend instead of reading it from the manifest or recognising the data.
    storage_options
        For a URL: the fsspec filesystem's options (credentials, ``client_kwargs`` with an
        ``endpoint_url`` ...); by default the environment's (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` ...).
    cache_dir, cache_limit_gb
        For a URL: a local directory that keeps whole copies of the store's data files,
        and the most GB it holds (least recently used copies go first; None: no limit).
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
    if not is_local(path):
        from ..remote import open_remote

        return open_remote(
            os.fspath(path),
            backend,
            storage_options=storage_options,
            cache_dir=cache_dir,
            cache_limit_gb=cache_limit_gb,
            **options,
        )
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
            f"'{os.fspath(path)}' is a local path; leave them out, or give the store's URL"
        )
    p = Path(path)
    if not p.exists():
        read_store_manifest(p)  # finishes an interrupted replace, or names a killed write
    if backend is not None:
        if p.is_dir() and is_store(p) and read_manifest(p).format != backend:
            raise ConfigError(
                f"'{p}' is a {read_manifest(p).format} store, not {backend}; leave out the "
                "backend to read it as what it is"
            )
        return _open(get_backend(backend), p, options)
    if not p.exists():
        raise NotAStoreError(f"'{p}' does not exist")
    if p.is_dir() and is_store(p):
        return _open(get_backend(read_manifest(p).format), p, options)
    orphans = [f for e in _table.values() for f in e.data_files if (p / f).is_file()]
    if orphans:
        raise NotAStoreError(
            f"'{p}' holds a store's data ({orphans[0]}) but no {MANIFEST_NAME}: without its "
            "manifest the data cannot be checked or trusted; convert the source again"
        )
    for name in [name for name, entry in _table.items() if entry.sniff]:
        try:
            candidate = get_backend(name)
        except BackendNotFoundError:
            continue
        if candidate.sniff(p):
            return _open(candidate, p, options)
    raise NotAStoreError(
        f"'{p}' is neither a seqstore store, a tensorpack LMDB file nor an image folder "
        "(a folder with one sub-folder of images per class)"
    )


def _open(backend: type[Backend], path: Path, options: dict[str, Any]) -> Reader:
    hint = " (options like --labels are for image folders)"
    with options_taken(f"the {backend.name} reader of '{path}'", options, hint):
        return backend.open_reader(path, **options)

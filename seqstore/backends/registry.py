"""Backend names to backend classes, imported on first use.

Built-in backends are named by dotted path so that importing seqstore does not import
lmdb or h5py. Third-party backends register through the ``seqstore.backends`` entry-point
group in their package metadata::

    [project.entry-points."seqstore.backends"]
    zarr = "seqstore_zarr:ZarrBackend"
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..errors import BackendNotFoundError, ConfigError, NotAStoreError
from ..manifest import MANIFEST_NAME, is_store, read_manifest
from .base import Backend, Reader
from .staging import read_store_manifest

__all__ = ["available_backends", "get_backend", "open_store", "register_backend"]

ENTRY_POINT_GROUP = "seqstore.backends"

_BUILTIN: dict[str, str] = {
    "folder": "seqstore.backends.folder:FolderBackend",
    "hdf5": "seqstore.backends.hdf5:HDF5Backend",
    "lmdb": "seqstore.backends.lmdb:LMDBBackend",
    "tensorpack": "seqstore.backends.tensorpack:TensorpackBackend",
}
# The pip extra that provides a built-in backend's optional dependency.
_EXTRAS: dict[str, str] = {"tensorpack": "tensorpack"}
# Data files of the built-in formats: a directory holding one without a manifest is a store
# that lost its manifest, not an image folder.
_DATA_FILES = ("data.mdb", "data.h5")
# Backends that recognise data without a seqstore manifest, tried in this order.
_SNIFF_ORDER = ("tensorpack", "folder")

_registry: dict[str, type[Backend] | str] = dict(_BUILTIN)
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
        Replace a backend already registered under ``name``.
    """
    _load_entry_points()
    if name in _registry and not overwrite:
        raise ValueError(f"a backend named '{name}' is already registered; pass overwrite=True")
    _registry[name] = backend


def available_backends() -> list[str]:
    """Names of every registered backend, built-in and from entry points, sorted."""
    _load_entry_points()
    return sorted(_registry)


def get_backend(name: str) -> type[Backend]:
    """The backend class registered under ``name``, imported if needed.

    Raises
    ------
    BackendNotFoundError
        No backend has that name, or its optional dependency is not installed.
    """
    _load_entry_points()
    try:
        entry = _registry[name]
    except KeyError:
        known = ", ".join(sorted(_registry))
        raise BackendNotFoundError(f"unknown backend '{name}'; choose one of: {known}") from None
    if isinstance(entry, str):
        module_name, _, attr = entry.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            extra = _EXTRAS.get(name)
            hint = f"pip install 'seqstore[{extra}]'" if extra else f"install '{exc.name}'"
            raise BackendNotFoundError(
                f"backend '{name}' needs the package '{exc.name}', which is not installed; "
                f"run: {hint}"
            ) from None
        entry = getattr(module, attr)
        _registry[name] = entry
    if not (isinstance(entry, type) and issubclass(entry, Backend)):
        raise BackendNotFoundError(f"backend '{name}' is {entry!r}, not a seqstore Backend class")
    return entry


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _registry.setdefault(ep.name, ep.value)


def open_store(
    path: str | os.PathLike[str], backend: str | None = None, **options: Any
) -> Reader[Any]:
    """Open any readable store: seqstore's own, a tensorpack LMDB file, or an image folder.

    Parameters
    ----------
    path
        The store's directory or file, or an image folder.
    backend
        Force a backend instead of reading it from the manifest or recognising the data.
    **options
        Passed to the backend's reader (for example ``labels=`` for a folder).

    Raises
    ------
    NotAStoreError
        Nothing at ``path`` is readable as a store.
    PartialStoreError
        The store's writer never finished.
    """
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
    orphans = [name for name in _DATA_FILES if (p / name).is_file()]
    if orphans:
        raise NotAStoreError(
            f"'{p}' holds a store's data ({orphans[0]}) but no {MANIFEST_NAME}: without its "
            "manifest the data cannot be checked or trusted; convert the source again"
        )
    for name in _SNIFF_ORDER:
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


def _open(backend: type[Backend], path: Path, options: dict[str, Any]) -> Reader[Any]:
    try:
        return backend.open_reader(path, **options)
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        raise ConfigError(
            f"the {backend.name} reader of '{path}' takes no option "
            f"{', '.join(repr(k) for k in options)} (options like --labels are for image "
            "folders)"
        ) from None

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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.metadata import entry_points
from types import MappingProxyType

from ..errors import BackendNotFoundError
from .base import Backend

__all__ = [
    "BackendEntry",
    "available_backends",
    "data_file_names",
    "get_backend",
    "register_backend",
    "registry",
    "sniffing_backends",
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
        Whether :func:`~seqstore.backends.opening.open_store` asks this backend to
        recognise data that carries no manifest (rows are asked in table order).
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
    "webdataset": BackendEntry("seqstore.backends.webdataset:WebDatasetBackend", sniff=True),
    "parquet": BackendEntry(
        "seqstore.backends.parquet:ParquetBackend", extra="parquet", sniff=True
    ),
    "tfrecord": BackendEntry(
        "seqstore.backends.tfrecord:TFRecordBackend", extra="tfrecord", sniff=True
    ),
    "arrow": BackendEntry(
        "seqstore.backends.parquet.arrow:ArrowBackend", extra="parquet", sniff=True
    ),
    "mds": BackendEntry("seqstore.backends.mds:MDSBackend", sniff=True),
    "litdata": BackendEntry("seqstore.backends.litdata:LitdataBackend", sniff=True),
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


def data_file_names() -> list[str]:
    """The data files of every registered format: a place holding one but no manifest is a
    store that lost its manifest (or whose upload did not finish), not other data."""
    _load_entry_points()
    return [name for entry in _table.values() for name in entry.data_files]


def sniffing_backends() -> list[type[Backend]]:
    """The backends asked, in table order, to recognise data that carries no manifest
    (those whose dependency is installed)."""
    _load_entry_points()
    found = []
    for name in [name for name, entry in _table.items() if entry.sniff]:
        try:
            found.append(get_backend(name))
        except BackendNotFoundError:
            continue
    return found


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

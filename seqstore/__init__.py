"""seqstore: image datasets as sequential, shuffled stores for PyTorch training."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__
from .backends import (
    Backend,
    Reader,
    Writer,
    available_backends,
    get_backend,
    register_backend,
)
from .backends import open_store as open
from .errors import (
    BackendNotFoundError,
    BadImageError,
    BadRecordError,
    BadRecordWarning,
    ConfigError,
    NotAStoreError,
    PartialStoreError,
    SeqstoreError,
    StoreExistsError,
    WorkerDiedError,
)
from .manifest import Manifest
from .records import Record

if TYPE_CHECKING:
    from . import transforms
    from .config import LoaderConfig
    from .pytorch import Loader

# The loader imports torch, the transforms OpenCV; the storage layer and the CLI's
# convert/info need neither.
_LAZY = {"Loader": "seqstore.pytorch", "LoaderConfig": "seqstore.config"}
_LAZY_MODULES = ("transforms",)


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'seqstore' has no attribute {name!r}")


__all__ = [
    "Backend",
    "BackendNotFoundError",
    "BadImageError",
    "BadRecordError",
    "BadRecordWarning",
    "ConfigError",
    "Loader",
    "LoaderConfig",
    "Manifest",
    "NotAStoreError",
    "PartialStoreError",
    "Reader",
    "Record",
    "SeqstoreError",
    "StoreExistsError",
    "WorkerDiedError",
    "Writer",
    "__version__",
    "available_backends",
    "get_backend",
    "open",
    "register_backend",
    "transforms",
]

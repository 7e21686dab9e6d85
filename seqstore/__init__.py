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
    from .config import LoaderConfig
    from .loader import Loader

# The loader imports torch; the storage layer and the CLI's convert/info do not need it.
_LAZY = {"Loader": "seqstore.loader", "LoaderConfig": "seqstore.config"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
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
]

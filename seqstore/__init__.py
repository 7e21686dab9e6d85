"""seqstore: image datasets as sequential, shuffled stores for PyTorch training."""

from __future__ import annotations

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
    ConfigError,
    NotAStoreError,
    PartialStoreError,
    SeqstoreError,
    StoreExistsError,
)
from .manifest import Manifest
from .records import Record

__all__ = [
    "Backend",
    "BackendNotFoundError",
    "BadImageError",
    "ConfigError",
    "Manifest",
    "NotAStoreError",
    "PartialStoreError",
    "Reader",
    "Record",
    "SeqstoreError",
    "StoreExistsError",
    "Writer",
    "__version__",
    "available_backends",
    "get_backend",
    "open",
    "register_backend",
]

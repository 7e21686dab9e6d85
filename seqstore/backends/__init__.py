"""Storage backends: the contract, the registry, and one module per format."""

from __future__ import annotations

from .base import Backend, Reader, Writer
from .registry import available_backends, get_backend, open_store, register_backend

__all__ = [
    "Backend",
    "Reader",
    "Writer",
    "available_backends",
    "get_backend",
    "open_store",
    "register_backend",
]

"""Formats: the contract, the registry, one module or package per format, sharded stores
(a composition of stores of one format), and the one place that opens a store."""

from __future__ import annotations

from .base import Backend, Reader, Writer
from .opening import open_store
from .registry import available_backends, get_backend, register_backend

__all__ = [
    "Backend",
    "Reader",
    "Writer",
    "available_backends",
    "get_backend",
    "open_store",
    "register_backend",
]

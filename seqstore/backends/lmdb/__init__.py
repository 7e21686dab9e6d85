"""LMDB stores: one B-tree, records under ordered keys.

:mod:`.layout` documents the store; :mod:`.pages` parses LMDB's pages over any byte
source; :mod:`.reader` reads a store from a disk or object storage through it (and, on a
disk, through an LMDB environment shared per process: :mod:`.env`); :mod:`.writer` writes
one in one pass.
"""

from __future__ import annotations

from typing import ClassVar

from ..base import Backend
from .layout import DATA_FILE
from .reader import LMDBReader
from .writer import LMDBWriter

__all__ = ["DATA_FILE", "LMDBBackend", "LMDBReader", "LMDBWriter"]


class LMDBBackend(Backend):
    """One LMDB environment per store; fast sequential cursors and cheap random access."""

    name: ClassVar[str] = "lmdb"
    description: ClassVar[str] = "LMDB B-tree, records under ordered keys"
    reader_cls = LMDBReader
    writer_cls = LMDBWriter

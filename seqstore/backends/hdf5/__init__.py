"""HDF5 stores: the image bytes of all records in one flat dataset, sliced by offsets.

:mod:`.layout` documents the file; :mod:`.reader` reads it from a disk or object storage,
:mod:`.writer` writes it in one pass.
"""

from __future__ import annotations

from typing import ClassVar

from ..base import Backend
from .layout import DATA_FILE
from .reader import HDF5Reader
from .writer import HDF5Writer

__all__ = ["DATA_FILE", "HDF5Backend", "HDF5Reader", "HDF5Writer"]


class HDF5Backend(Backend):
    """One HDF5 file per store, image bytes in one flat dataset for range reads."""

    name: ClassVar[str] = "hdf5"
    description: ClassVar[str] = "HDF5 file, flat byte dataset sliced by offsets"
    reader_cls = HDF5Reader
    writer_cls = HDF5Writer

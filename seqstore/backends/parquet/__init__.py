"""Parquet files of images read in place, as Hugging Face ``datasets`` writes them and the
Hub serves them (``data/train-00000-of-00004.parquet``).

A dataset is a directory (or a prefix in object storage) of ``.parquet`` files, at any depth,
read in sorted order, or one file. pyarrow reads each file through a file object over its
byte source (:class:`~seqstore.io.fileobj.SourceFile`), so a file in object storage is read
by ranged requests: the footer once, then the columns of the row groups a block needs
(:mod:`.reader`).

- The image is a column of encoded images: a struct ``{bytes, path}`` (``datasets``'
  ``Image`` feature) or plain binary. The label is an integer column. Where the schema's
  ``huggingface`` metadata names an ``Image`` and a ``ClassLabel`` feature, those are the
  columns and the ``ClassLabel``'s names the classes; otherwise the only such columns,
  or those ``image_field=`` and ``label_field=`` name (one line lists the columns when it
  cannot be told). A dataset without a label column has label -1.
- The labels of every row are read at open (one column: a few bytes per row); a block's
  images come from the row groups that hold it, one row group kept per process, so that
  consecutive blocks of one row group read it once.
- Parquet pages carry no checksum seqstore can check: ``verify`` says there is nothing to
  check.

:mod:`.writer` writes files that ``datasets`` loads with their features
(``convert --format parquet``).
"""

from __future__ import annotations

from typing import ClassVar

from ...io.places import Place
from ..base import Backend
from .reader import ParquetReader
from .writer import ParquetWriter

__all__ = ["ParquetBackend", "ParquetReader", "ParquetWriter"]


class ParquetBackend(Backend):
    """Parquet files of encoded images (Hugging Face datasets' layout), read in place."""

    name: ClassVar[str] = "parquet"
    description: ClassVar[str] = "Parquet files of images, as HF datasets writes them"
    reader_cls = ParquetReader
    writer_cls = ParquetWriter

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        if place.pattern is not None:
            return any(name.endswith(".parquet") for name in place.files())
        local = place.local
        if local is not None:
            if local.is_file():
                return local.name.endswith(".parquet")
            if not local.is_dir():
                return False
            # The top level and data/ only: a large image folder is not walked to tell.
            tops = [local, local / "data"]
            return any(
                p.name.endswith(".parquet") and p.is_file()
                for top in tops
                if top.is_dir()
                for p in top.iterdir()
            )
        try:
            return any(
                n.endswith(".parquet") or n == "" and place.where.endswith(".parquet")
                for n in place.files()
            )
        except OSError:
            return False

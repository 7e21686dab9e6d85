"""WebDataset shards read in place: tar files whose members, grouped by key, are samples.

A shard is a tar file whose consecutive members with the same key form a sample, as
WebDataset writes and reads them: ``n01440764_10026.jpg`` and ``n01440764_10026.cls`` are
the image and the label of the sample ``n01440764_10026``. The key is a member's name up to
the first dot of its last component; the rest is the extension, which names the field.
seqstore reads the image from ``jpg``, ``jpeg``, ``png`` or ``webp`` (or ``image_field=``),
the integer label from ``cls`` (or ``label_field=``: another member, or a key of the
``json`` member), and a sample without a label gets -1. A dataset is a directory (or a
prefix in object storage) of such shards, read in sorted name order, or one ``.tar`` file.

Each shard's member table is made by one sequential pass over its headers and kept
(:mod:`.index`); a block of samples is then a run of members of one shard, read as a few
large reads (one ranged GET in object storage). Shards carry no checksums.

:mod:`.writer` writes shards that WebDataset itself reads (``convert --format webdataset``).
"""

from __future__ import annotations

from typing import ClassVar

from ...io.places import Place
from ...manifest import MANIFEST_NAME
from ..base import Backend
from .reader import WebDatasetReader
from .writer import WebDatasetWriter

__all__ = ["WebDatasetBackend", "WebDatasetReader", "WebDatasetWriter"]


class WebDatasetBackend(Backend):
    """WebDataset tar shards, read in place."""

    name: ClassVar[str] = "webdataset"
    description: ClassVar[str] = "WebDataset tar shards, read in place"
    reader_cls = WebDatasetReader
    writer_cls = WebDatasetWriter
    keeps_order: ClassVar[bool] = True

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        if place.pattern is not None:
            return any(name.endswith(".tar") for name in place.files())
        local = place.local
        if local is not None:
            if local.is_file():
                return local.name.endswith(".tar")
            if not local.is_dir() or (local / MANIFEST_NAME).exists():
                return False
            # The top level only: a large image folder is not walked to tell.
            return any(p.name.endswith(".tar") and p.is_file() for p in local.iterdir())
        if place.where.endswith(".tar"):
            return place.exists("")
        try:
            return any(name.endswith(".tar") for name in place.files())
        except (FileNotFoundError, OSError):
            return False

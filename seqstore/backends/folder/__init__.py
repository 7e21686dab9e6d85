"""Image folders read in place, with torchvision's ImageFolder rules, and written by export.

Two layouts are read:

* An ImageFolder tree: ``root/<class>/**/<image>``. Classes are the sorted names of the
  sub-directories of ``root`` (hidden ones included, as torchvision does); within each
  class, files are found by ``sorted(os.walk(..., followlinks=True))`` with sorted file
  names, and kept when their lower-cased name ends in one of torchvision's
  ``IMG_EXTENSIONS``. Class indices and sample order are therefore torchvision's.
* A validation layout as ILSVRC2012 and Tiny-ImageNet ship it: one flat folder of images
  plus a label file with one ``<file><whitespace><label>`` line per image, where the label
  is a class name (``val_0.JPEG<TAB>n01443537<TAB>...``) or a class index
  (``ILSVRC2012_val_00000001.JPEG 65``). Records are in sorted file-name order; labels are
  mapped onto the training split's classes when those are given.

A folder written by :class:`FolderWriter` is an ImageFolder tree plus a manifest, with one
directory per class (also for classes that received no image), so class indices survive
the round trip. Records read back in sorted order, not write order.
"""

from __future__ import annotations

from typing import ClassVar

from ...io.places import Place
from ...manifest import MANIFEST_NAME
from ..base import Backend
from .reader import FolderReader
from .tree import IMG_EXTENSIONS, find_classes, load_classes
from .writer import FolderWriter

__all__ = [
    "IMG_EXTENSIONS",
    "FolderBackend",
    "FolderReader",
    "FolderWriter",
    "find_classes",
    "load_classes",
]


class FolderBackend(Backend):
    """Images left as files in an ImageFolder tree or a labelled flat folder."""

    name: ClassVar[str] = "folder"
    description: ClassVar[str] = "image files in place (torchvision ImageFolder rules)"
    reader_cls = FolderReader
    writer_cls = FolderWriter
    keeps_order: ClassVar[bool] = False
    reads_urls: ClassVar[bool] = False  # a folder is listed, and object storage is not

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        path = place.local
        if place.pattern is not None:  # a folder is a directory, not files named by a pattern
            return False
        return path is not None and path.is_dir() and not (path / MANIFEST_NAME).exists()

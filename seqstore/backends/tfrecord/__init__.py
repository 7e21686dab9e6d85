"""TFRecord files of ``tf.train.Example`` images, read in place, without TensorFlow.

ImageNet as TF's model scripts build it (``train-00000-of-01024``: ``image/encoded``,
``image/class/label`` from 1) and as TFDS builds it (``*.tfrecord-00000-of-01024``:
``image``, ``label``). The framing and the Example records are parsed here
(:mod:`.example`); each file's record table is made by one pass and kept, as a tar shard's
is; every record's CRC-32C is checked as it is read.
"""

from __future__ import annotations

from typing import ClassVar

from ...io.places import Place
from ..base import Backend
from .example import HEADER, masked_crc
from .reader import TFRecordReader, is_tfrecord_name

__all__ = ["TFRecordBackend", "TFRecordReader"]


class TFRecordBackend(Backend):
    """TFRecord files of tf.train.Example images, read in place."""

    name: ClassVar[str] = "tfrecord"
    description: ClassVar[str] = "TFRecord files of tf.train.Example images (read only)"
    reader_cls = TFRecordReader

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        local = place.local
        if place.pattern is not None:
            found = [n for n in place.files() if is_tfrecord_name(n)]
            if not found:
                return False
            name = found[0]
        elif local is not None:
            if local.is_dir():
                found = sorted(
                    p.name for p in local.iterdir() if p.is_file() and is_tfrecord_name(p.name)
                )
                if not found:
                    return False
                name = found[0]
            elif local.is_file():
                name = ""
            else:
                return False
        else:
            try:
                files = place.files()
            except OSError:
                return False
            found = [n for n in files if n == "" or is_tfrecord_name(n)]
            if not found:
                return False
            name = found[0]
        try:
            source = place.source(name)
            head = bytes(source.read(0, HEADER.size)) if source.size >= HEADER.size else b""
            source.close()
        except (OSError, ValueError):
            return False
        if len(head) < HEADER.size:
            return False
        length, crc = HEADER.unpack(head)
        return length > 0 and masked_crc(head[:8]) == crc

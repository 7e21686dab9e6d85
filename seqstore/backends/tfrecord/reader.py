"""Reading TFRecord files of ``tf.train.Example`` images in place (see
:mod:`seqstore.backends.tfrecord`)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import ConfigError, CorruptStoreError
from ...io.fileobj import SourceFile
from ...io.places import Place
from ...io.ranges import Source
from ..in_place import FilesReader
from ..index_cache import default_index_dir, kept_table
from .example import HEADER, Feature, masked_crc, parse_example

__all__ = ["IMAGE_NAMES", "LABEL_NAMES", "TFRecordReader", "is_tfrecord_name"]

#: Feature names of the image and the label, in the layouts of TF's ImageNet scripts
#: (``image/encoded``, ``image/class/label``) and of TFDS (``image``, ``label``).
IMAGE_NAMES = ("image/encoded", "image")
LABEL_NAMES = ("image/class/label", "label")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"RIFF", b"GIF8", b"BM")
_NAME = re.compile(r"\.tfrecords?(-|$|\.)|-of-\d+$")
_REMEDY = "write the file again"


def is_tfrecord_name(name: str) -> bool:
    """Whether a file name is one TFRecord writers give (``*.tfrecord*``, ``*-of-NNNNN``)."""
    return bool(_NAME.search(name.rsplit("/", 1)[-1]))


class TFRecordReader(FilesReader):
    """Reader of TFRecord files of ``tf.train.Example`` images, in place, on a local disk
    or in object storage.

    Parameters
    ----------
    location
        A directory (or prefix) of TFRecord files (names ``*.tfrecord*`` or ``*-of-NNNNN``,
        read in sorted order, at any depth), one such file, or their
        :class:`~seqstore.io.places.Place`.
    image_field, label_field
        The features that hold the encoded image and the integer label. Default: TF's
        ImageNet names (``image/encoded``, ``image/class/label``) or TFDS's (``image``,
        ``label``), else the only bytes feature that holds an image and the only int64
        feature with one value; a record without a label has -1.
    label_offset
        Added to every label: TF's ImageNet files number classes from 1, so -1 makes them
        start at 0. Labels are returned as stored by default.
    classes
        Class names for the labels (a list, a file with one per line, or an ImageFolder
        root).
    index_dir
        Where the record tables of the files are kept (default:
        :func:`~seqstore.backends.index_cache.default_index_dir`).

    Notes
    -----
    Every record's masked CRC-32C is checked as it is read (and as the table is made): a
    damaged record is one error naming the file and the record.
    """

    stores_checksums: ClassVar[bool] = True  # every record's CRC-32C, checked as it is read
    format_name: ClassVar[str] = "tfrecord"

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        image_field: str | None = None,
        label_field: str | None = None,
        label_offset: int = 0,
        classes: str | os.PathLike[str] | Sequence[str] | None = None,
        index_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(location)
        self.open_files(is_tfrecord_name, "TFRecord files (*.tfrecord*, *-of-NNNNN)")
        directory = Path(index_dir) if index_dir is not None else default_index_dir()
        fields = (image_field, label_field)
        tables = [
            kept_table(source, directory, f"tfrecord {fields}", partial(_scan, source, fields))
            for source in self.sources
        ]
        self._starts = np.concatenate([t["starts"] for t in tables])
        self._lengths = np.concatenate([t["lengths"] for t in tables])
        self._images = np.concatenate([t["images"] for t in tables]).reshape(-1, 2)
        self._labels = np.concatenate([t["labels"] for t in tables]) + label_offset
        self._bounds = np.cumsum([0] + [len(t["starts"]) for t in tables]).astype(np.int64)
        self.describe(int((self._images[:, 1] - self._images[:, 0]).sum()), classes)

    def read_run(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        source, first = self.sources[file], int(self._bounds[file])
        lengths = self._lengths[start:stop].tolist()
        # Each record's data and the CRC that follows it.
        extents = [
            (s, n + 4) for s, n in zip(self._starts[start:stop].tolist(), lengths, strict=True)
        ]
        out = []
        for i, piece, n in zip(
            range(start, stop), source.read_extents(extents), lengths, strict=True
        ):
            data = piece[:n]
            if masked_crc(data) != int.from_bytes(piece[n:], "little"):
                raise CorruptStoreError(
                    f"record {i - first} of TFRecord file '{source.name}' fails its CRC-32C "
                    f"(damaged); {_REMEDY}"
                )
            lo, hi = self._images[i].tolist()
            key = f"{self.files[file] or source.name.rsplit('/', 1)[-1]}#{i - first}"
            out.append((key, int(self._labels[i]), bytes(data[lo:hi])))
        return out


def _choose(
    features: dict[str, Feature], data: bytes, fields: tuple[str | None, str | None], where: str
) -> tuple[str, str | None]:
    """The image and label feature names of a file, from its first record: those given,
    else the known names, else the only candidate."""
    image, label = fields
    listing = ", ".join(f"{k} ({v.kind})" for k, v in sorted(features.items()))
    if image is None:
        images = [k for k in IMAGE_NAMES if k in features and features[k].kind == "bytes"]
        if not images:
            images = [
                k
                for k, v in features.items()
                if v.kind == "bytes"
                and v.spans
                and data[v.spans[0][0] : v.spans[0][0] + 4].startswith(_MAGIC)
            ]
        if len(images) != 1:
            raise ConfigError(
                f"cannot tell the image feature of '{where}' (its features: {listing}); "
                "choose it with image_field="
            )
        image = images[0]
    if label is None:
        labels = [k for k in LABEL_NAMES if k in features and features[k].kind == "int64"]
        if not labels:
            labels = [k for k, v in features.items() if v.kind == "int64" and len(v.ints) == 1]
        if len(labels) > 1:
            raise ConfigError(
                f"cannot tell the label feature of '{where}' (its features: {listing}); "
                "choose it with label_field="
            )
        label = labels[0] if labels else None
    return image, label


def _scan(source: Source, fields: tuple[str | None, str | None]) -> dict[str, np.ndarray]:
    """One pass over a file's records, each checked against its CRC-32C."""
    file = SourceFile(source, page_size=4 << 20, cache_bytes=8 << 20)
    starts: list[int] = []
    lengths: list[int] = []
    images: list[tuple[int, int]] = []
    labels: list[int] = []
    chosen: tuple[str, str | None] | None = None
    pos = 0
    while pos < source.size:
        head = file.pread(pos, HEADER.size)
        if len(head) < HEADER.size:
            raise _damaged(source, len(starts), "cut short in a record's header")
        length, crc = HEADER.unpack(head)
        if masked_crc(head[:8]) != crc:
            raise _damaged(source, len(starts), "its length fails its CRC-32C")
        start = pos + HEADER.size
        body = file.pread(start, length + 4)
        if len(body) < length + 4:
            raise _damaged(source, len(starts), "cut short")
        data = body[:length]
        if masked_crc(data) != int.from_bytes(body[length:], "little"):
            raise _damaged(source, len(starts), "its data fails its CRC-32C")
        try:
            features = parse_example(data)
        except ValueError as exc:
            raise _damaged(source, len(starts), f"not a tf.train.Example: {exc}") from None
        if chosen is None:
            chosen = _choose(features, data, fields, source.name)
        image = features.get(chosen[0])
        if image is None or image.kind != "bytes" or not image.spans:
            raise ConfigError(
                f"record {len(starts)} of '{source.name}' has no bytes feature "
                f"'{chosen[0]}'; choose the image with image_field="
            )
        label = -1
        if chosen[1] is not None:
            found = features.get(chosen[1])
            if found is None or found.kind != "int64" or len(found.ints) != 1:
                raise ConfigError(
                    f"record {len(starts)} of '{source.name}' has no single int64 "
                    f"'{chosen[1]}'; choose the label with label_field="
                )
            label = found.ints[0]
        starts.append(start)
        lengths.append(length)
        images.append(image.spans[0])
        labels.append(label)
        pos = start + length + 4
    return {
        "starts": np.array(starts, np.int64),
        "lengths": np.array(lengths, np.int64),
        "images": np.array(images, np.int64).reshape(-1, 2),
        "labels": np.array(labels, np.int64),
    }


def _damaged(source: Source, record: int, what: str) -> CorruptStoreError:
    return CorruptStoreError(
        f"TFRecord file '{source.name}' is damaged at record {record} ({what}); {_REMEDY}"
    )

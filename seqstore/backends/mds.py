"""MosaicML Streaming's MDS shards, read in place: ``index.json`` and ``shard.NNNNN.mds``
as ``streaming.MDSWriter`` writes them (compressed shards included), on a local disk or in
object storage, without the ``streaming`` package.

``index.json`` lists the shards, their columns (names, encodings, fixed sizes), their
compression and their hashes; the shards are read as :mod:`.offset_shards` says.

- The image is the column of ``jpeg``, ``png`` or ``bytes`` encoding (encoded images, read
  as stored), or the one ``image_field=`` names. A ``pil`` column holds raw pixels: it is
  refused with one line. A ``pkl`` column is unpickled only with ``allow_pickle=True``.
- The label is the integer column (``int``, ``int8`` ... ``uint64``, ``str_int``), or the
  one ``label_field=`` names; without one, every label is -1.
- MDS records no class names: ``classes`` is empty unless ``classes=`` gives them.
- Each shard's hashes (``sha1``, ``xxh64`` ..., where the writer was given ``hashes=``) are
  checked by ``seqstore info --verify``, and as a compressed shard is unpacked.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from ..errors import ConfigError, CorruptStoreError, NotAStoreError
from ..io.places import Place
from .base import Backend
from .offset_shards import Fields, OffsetShardsReader, Shard

__all__ = ["MDSBackend", "MDSReader"]

INDEX = "index.json"
_REMEDY = "write the dataset again with MDSWriter, or copy its files again"
_INTS = {
    "int": "<i8",
    "int8": "<i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "uint8": "<u1",
    "uint16": "<u2",
    "uint32": "<u4",
    "uint64": "<u8",
    "str_int": "str",
}


def read_index(place: Place, name: str, remedy: str) -> dict[str, Any]:
    """The JSON index ``name`` of a dataset.

    Raises
    ------
    NotAStoreError
        There is none.
    CorruptStoreError
        It is not JSON.
    """
    try:
        raw = place.read_bytes(name)
    except FileNotFoundError:
        raise NotAStoreError(f"'{place.where}' holds no {name}") from None
    try:
        index = json.loads(raw)
    except ValueError as exc:
        raise CorruptStoreError(
            f"{name} of '{place.where}' is not JSON ({exc}); {remedy}"
        ) from None
    if not isinstance(index, dict):
        raise CorruptStoreError(f"{name} of '{place.where}' is not a JSON object; {remedy}")
    return index


def _shard(row: dict[str, Any], where: str) -> Shard:
    if row.get("format") != "mds":
        raise ConfigError(
            f"'{where}' holds MDS shards of format '{row.get('format')}'; seqstore reads the "
            "'mds' format (images in columns)"
        )
    try:
        sizes = [None if s is None else int(s) for s in row["column_sizes"]]
        fields = Fields(
            names=list(row["column_names"]),
            encodings=list(row["column_encodings"]),
            sizes=sizes,
            headed=[s is None for s in sizes],
        )
        stored = row.get("zip_data") or row["raw_data"]
        return Shard(
            name=stored["basename"],
            size=int(stored["bytes"]),
            compression=row.get("compression") if row.get("zip_data") else None,
            hashes=dict(stored.get("hashes") or {}),
            samples=int(row["samples"]),
            fields=fields,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptStoreError(
            f"{INDEX} of '{where}' has a shard entry without {exc}; {_REMEDY}"
        ) from None


class MDSReader(OffsetShardsReader):
    """Reader of MDS shards in place (see the module docstring); its options are
    :class:`~seqstore.backends.offset_shards.OffsetShardsReader`'s (the image and label
    are columns; a pickled one is a ``pkl`` column)."""

    format_name: ClassVar[str] = "mds"
    writer: ClassVar[str] = "MDS"
    remedy: ClassVar[str] = _REMEDY
    image_encodings: ClassVar[frozenset[str]] = frozenset({"jpeg", "png", "bytes"})
    pixel_encodings: ClassVar[frozenset[str]] = frozenset({"pil", "ndarray"})
    pickle_encodings: ClassVar[frozenset[str]] = frozenset({"pkl"})
    int_encodings: ClassVar[dict[str, str]] = _INTS

    def read_shards(self) -> list[Shard]:
        # docstring inherited
        index = read_index(self.place, INDEX, _REMEDY)
        if index.get("version") != 2 or not isinstance(index.get("shards"), list):
            raise ConfigError(
                f"{INDEX} of '{self.place.where}' is not an MDS index of version 2 (one with "
                "'shards'), which is what seqstore reads"
            )
        return [_shard(row, self.place.where) for row in index["shards"]]


def index_of(place: Place) -> dict[str, Any] | None:
    """The JSON ``index.json`` at a place; None where there is none, or it does not read."""
    local = place.local
    if local is not None and not (local / INDEX).is_file():
        return None
    try:
        index = json.loads(place.read_bytes(INDEX))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


class MDSBackend(Backend):
    """MosaicML Streaming's MDS shards of images, read in place."""

    name: ClassVar[str] = "mds"
    description: ClassVar[str] = "MosaicML Streaming MDS shards of images (read only)"
    reader_cls = MDSReader

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        index = index_of(place)
        return index is not None and isinstance(index.get("shards"), list)

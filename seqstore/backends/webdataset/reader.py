"""Reading WebDataset shards in place (the layout: :mod:`seqstore.backends.webdataset`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import ConfigError, CorruptStoreError, NotAStoreError
from ...io.places import Place
from ..in_place import FilesReader
from ..index_cache import default_index_dir
from .index import IMAGE_EXTENSIONS, TarIndex, shard_index

__all__ = ["WebDatasetReader", "sample_key"]

_REMEDY = "write the shard again"


def sample_key(name: str) -> tuple[str, str]:
    """A member name split as WebDataset splits it: the key is the name up to the first dot
    of its last component, the extension (lower-cased) the rest."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), (ext.lower() if dot else "")


class WebDatasetReader(FilesReader):
    """Reader of WebDataset tar shards, in place, on a local disk or in object storage.

    Parameters
    ----------
    location
        A directory (or prefix) holding ``.tar`` shards, at any depth, read in sorted
        order; or one ``.tar`` file; or their :class:`~seqstore.io.places.Place`.
    image_field
        The extension of the member that holds each sample's image, where a sample has
        several of ``jpg``, ``jpeg``, ``png``, ``webp``.
    label_field
        The extension of the member that holds each sample's integer label (default
        ``cls``), or a key of its ``json`` member. A sample without one has label -1.
    classes
        Class names for the labels (a list, a file with one per line, or an ImageFolder
        root); shards record none.
    index_dir
        Where the member tables of the shards are kept (default:
        :func:`~seqstore.backends.index_cache.default_index_dir`).

    Notes
    -----
    Shards carry no checksums: a record's checksum is computed as it is read, and
    ``verify`` reports that nothing could be checked.
    """

    format_name: ClassVar[str] = "webdataset"

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        image_field: str | None = None,
        label_field: str | None = None,
        classes: str | os.PathLike[str] | Sequence[str] | None = None,
        index_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(location)
        where = self.place.where
        if where.endswith(".tar") or self.place.local is None or not self.place.local.is_file():
            self.open_files(lambda name: name.endswith(".tar"), ".tar shards")
        else:
            raise NotAStoreError(f"'{where}' is not a .tar shard")
        directory = Path(index_dir) if index_dir is not None else default_index_dir()
        keys: list[str] = []
        labels: list[int] = []
        offsets: list[int] = []
        sizes: list[int] = []
        bounds = [0]
        for source in self.sources:
            table = shard_index(source, directory, _REMEDY)
            for key, offset, size, label in _samples(table, source.name, image_field, label_field):
                keys.append(key)
                offsets.append(offset)
                sizes.append(size)
                labels.append(label)
            bounds.append(len(keys))
        self._keys = keys
        self._labels = np.array(labels, np.int64)
        self._offsets = np.array(offsets, np.int64)
        self._sizes = np.array(sizes, np.int64)
        self._bounds = np.array(bounds, np.int64)
        self.describe(int(self._sizes.sum()), classes)

    def read_run(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        extents = list(
            zip(self._offsets[start:stop].tolist(), self._sizes[start:stop].tolist(), strict=True)
        )
        pieces = self.sources[file].read_extents(extents)
        return [
            (self._keys[i], int(self._labels[i]), bytes(piece))
            for i, piece in zip(range(start, stop), pieces, strict=True)
        ]


def _samples(
    table: TarIndex, shard: str, image_field: str | None, label_field: str | None
) -> list[tuple[str, int, int, int]]:
    """The samples of one shard, in order: members that follow each other with the same
    key, as ``(key, image offset, image size, label)``."""
    out: list[tuple[str, int, int, int]] = []
    members: dict[str, int] = {}
    current: str | None = None

    def close() -> None:
        if current is not None:
            out.append(_sample(table, shard, current, members, image_field, label_field))

    for i, name in enumerate(table.names):
        key, ext = sample_key(name)
        if key != current:
            close()
            current, members = key, {}
        members[ext] = i
    close()
    return out


def _sample(
    table: TarIndex,
    shard: str,
    key: str,
    members: dict[str, int],
    image_field: str | None,
    label_field: str | None,
) -> tuple[str, int, int, int]:
    if image_field is not None:
        if image_field not in members:
            raise ConfigError(
                f"sample '{key}' of '{shard}' has no '{image_field}' member (it has: "
                f"{', '.join(sorted(members))}); choose image_field= among them"
            )
        image = members[image_field]
    else:
        found = [ext for ext in members if ext in IMAGE_EXTENSIONS]
        if len(found) != 1:
            what = "no image member" if not found else f"several images ({', '.join(found)})"
            raise ConfigError(
                f"sample '{key}' of '{shard}' has {what}; its members are "
                f"{', '.join(sorted(members))}: choose one with image_field="
            )
        image = members[found[0]]
    label = _label(table, shard, key, members, label_field or "cls", label_field is not None)
    return key, int(table.offsets[image]), int(table.sizes[image]), label


def _label(
    table: TarIndex, shard: str, key: str, members: dict[str, int], field: str, asked: bool
) -> int:
    if field in members:
        text = table.small.get(members[field])
        try:
            return int((text or b"").strip())
        except ValueError:
            raise CorruptStoreError(
                f"the '{field}' member of sample '{key}' in '{shard}' is not an integer "
                f"label ({(text or b'')[:40]!r}); choose another with label_field="
            ) from None
    if "json" in members and asked:
        raw = table.small.get(members["json"])
        try:
            value = json.loads(raw or b"{}")[field]
            return int(value)
        except (ValueError, KeyError, TypeError):
            raise CorruptStoreError(
                f"sample '{key}' in '{shard}' has no integer '{field}' in its json member; "
                "choose another with label_field="
            ) from None
    if asked:
        raise ConfigError(
            f"sample '{key}' of '{shard}' has no '{field}' member (it has: "
            f"{', '.join(sorted(members))}); choose label_field= among them"
        )
    return -1

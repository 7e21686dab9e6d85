"""Reading MDS shards and litdata chunks in place (see
:mod:`seqstore.backends.offset_shards`)."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np

from ...errors import ConfigError, CorruptStoreError
from ...io.cache import ShardCache
from ...io.local import LocalFile
from ...io.places import Place
from ...io.ranges import Source
from ..in_place import FilesReader
from ..index_cache import default_index_dir, kept_table
from .layout import Fields, Shard, encoding_kind, fields_of_kind, locate
from .packing import check_hashes, file_pieces, unpack

__all__ = ["OffsetShardsReader"]

_U32 = struct.Struct("<I")


class OffsetShardsReader(FilesReader):
    """Base of the readers of MDS shards and litdata chunks (see the module docstring).

    A subclass reads its index into :class:`Shard` rows (:meth:`read_shards`).

    Parameters
    ----------
    location
        The dataset's directory or prefix (holding its ``index.json``), or its place.
    image_field, label_field
        The fields of the image and of the integer label, where they cannot be told.
    classes
        Class names for the labels.
    allow_pickle
        Unpickle a pickled image or label field (runs any code the data holds).
    index_dir
        Where the sample tables are kept (default:
        :func:`~seqstore.backends.index_cache.default_index_dir`).
    unpack_dir
        Where compressed shards are unpacked (default: ``unpacked`` beside ``index_dir``).
    """

    #: The encodings of encoded images (read as they are), of raw pixels (refused), of
    #: pickles (read only with ``allow_pickle=True``), and of integers (dtype by encoding).
    image_encodings: ClassVar[frozenset[str]]
    pixel_encodings: ClassVar[frozenset[str]]
    pickle_encodings: ClassVar[frozenset[str]]
    int_encodings: ClassVar[dict[str, str]]
    #: How the writer is named in messages, and what a user does about a damaged shard.
    writer: ClassVar[str]
    remedy: ClassVar[str]

    shards: list[Shard]

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        image_field: str | None = None,
        label_field: str | None = None,
        classes: str | os.PathLike[str] | Sequence[str] | None = None,
        allow_pickle: bool = False,
        index_dir: str | os.PathLike[str] | None = None,
        unpack_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(location)
        # Open every shard (unpacking compressed ones), choose the fields, read the labels
        # and describe the dataset.
        shards = self.read_shards()
        self.shards, self.files, self.sources = shards, [s.name for s in shards], []
        if not shards:  # an empty dataset
            self._labels = self._starts = self._ends = np.empty(0, np.int64)
            self._bounds, self._other = np.zeros(1, np.int64), []
            self.describe(0, classes)
            return
        directory = Path(index_dir) if index_dir is not None else default_index_dir()
        cache: ShardCache | None = None
        for shard in shards:
            source = self._open(shard)
            if shard.compression is not None:
                if cache is None:
                    where = Path(unpack_dir) if unpack_dir else directory.parent / "unpacked"
                    cache = ShardCache(where, None)
                path = unpack(source, shard, cache, self.remedy)
                source.close()
                source = LocalFile(path)
            self.sources.append(source)
        fields = shards[0].fields
        self._image = self._choose_image(fields, image_field, allow_pickle)
        self._label = self._choose_label(fields, label_field, allow_pickle)
        self._allow_pickle = allow_pickle
        tables = [
            kept_table(
                source,
                directory,
                f"{self.format_name} samples {self._label}",
                partial(self._scan, source, shard),
            )
            for source, shard in zip(self.sources, shards, strict=True)
        ]
        self._starts = np.concatenate([t["offsets"][:-1] for t in tables])
        self._ends = np.concatenate([t["offsets"][1:] for t in tables])
        self._labels = np.concatenate([t["labels"] for t in tables])
        self._bounds = np.cumsum([0] + [len(t["labels"]) for t in tables]).astype(np.int64)
        self._other = [t.get("batches") for t in tables]
        self.describe(sum(source.size for source in self.sources), classes)

    def _open(self, shard: Shard) -> Source:
        if shard.size is None:
            try:
                return self.place.source(shard.name)
            except FileNotFoundError:
                raise CorruptStoreError(
                    f"'{self.place.where}' lacks the shard '{shard.name}' its index lists; "
                    f"{self.remedy}"
                ) from None
        return self.place.open(shard.name, shard.size)

    def _choose_image(self, fields: Fields, chosen: str | None, allow_pickle: bool) -> int:
        where = self.place.where
        if chosen is None:
            found = fields_of_kind(fields, self.image_encodings)
            if len(found) == 1:
                return found[0]
            if not found:
                pixels = fields_of_kind(fields, self.pixel_encodings)
                if len(pixels) == 1:
                    self._refuse_pixels(fields, pixels[0])
                pickles = fields_of_kind(fields, self.pickle_encodings)
                if len(pickles) == 1 and allow_pickle:
                    return pickles[0]
            raise ConfigError(
                f"cannot tell the image field of {self.writer} dataset '{where}' (its fields: "
                f"{fields.listing()}); choose it with image_field="
            )
        i = self._index(fields, chosen)
        encoding = encoding_kind(fields.encodings[i])
        if encoding in self.pixel_encodings:
            self._refuse_pixels(fields, i)
        if encoding in self.pickle_encodings and not allow_pickle:
            self._refuse_pickle(fields, i)
        if encoding not in self.image_encodings | self.pickle_encodings:
            raise ConfigError(
                f"field '{chosen}' of {self.writer} dataset '{where}' is {encoding}, not an "
                f"encoded image (its fields: {fields.listing()})"
            )
        return i

    def _choose_label(self, fields: Fields, chosen: str | None, allow_pickle: bool) -> int | None:
        if chosen is None:
            found = fields_of_kind(fields, self.int_encodings)
            if len(found) > 1:
                raise ConfigError(
                    f"cannot tell the label field of {self.writer} dataset '{self.place.where}' "
                    f"(its fields: {fields.listing()}); choose it with label_field="
                )
            return found[0] if found else None
        i = self._index(fields, chosen)
        encoding = encoding_kind(fields.encodings[i])
        if encoding in self.pickle_encodings and not allow_pickle:
            self._refuse_pickle(fields, i)
        if encoding not in self.int_encodings and encoding not in self.pickle_encodings:
            raise ConfigError(
                f"field '{chosen}' of {self.writer} dataset '{self.place.where}' is {encoding}, "
                f"not an integer (its fields: {fields.listing()})"
            )
        return i

    def _index(self, fields: Fields, name: str) -> int:
        if name not in fields.names:
            raise ConfigError(
                f"{self.writer} dataset '{self.place.where}' has no field '{name}' (its fields: "
                f"{fields.listing()})"
            )
        return fields.names.index(name)

    def _refuse_pixels(self, fields: Fields, i: int) -> None:
        raise ConfigError(
            f"field '{fields.names[i]}' of {self.writer} dataset '{self.place.where}' holds raw "
            f"pixels ({fields.encodings[i]}), which seqstore does not read: write the dataset "
            "again with the images encoded (JPEG or PNG bytes), or read it with its own loader "
            "and convert it with re-encoding"
        )

    def _refuse_pickle(self, fields: Fields, i: int) -> None:
        raise ConfigError(
            f"field '{fields.names[i]}' of {self.writer} dataset '{self.place.where}' is "
            "pickled, and unpickling runs any code the file holds: pass allow_pickle=True only "
            "for data you trust"
        )

    def _scan(self, source: Source, shard: Shard) -> dict[str, np.ndarray]:
        """A shard's sample offsets (from its table) and labels."""
        where = source.name
        if source.size < 4:
            raise CorruptStoreError(f"shard '{where}' is cut short; {self.remedy}")
        n = _U32.unpack(bytes(source.read(0, 4)))[0]
        if n != shard.samples:
            raise CorruptStoreError(
                f"shard '{where}' holds {n} samples, not the {shard.samples} its index records "
                f"(damaged or replaced); {self.remedy}"
            )
        table = 4 + 4 * (n + 1)
        if source.size < table:
            raise CorruptStoreError(f"shard '{where}' is cut short; {self.remedy}")
        offsets = np.frombuffer(bytes(source.read(4, 4 * (n + 1))), "<u4").astype(np.int64)
        if n and (offsets[0] < table or np.any(np.diff(offsets) < 0) or offsets[-1] > source.size):
            raise CorruptStoreError(
                f"shard '{where}' has sample offsets past its end or out of order (cut short or "
                f"damaged); {self.remedy}"
            )
        if n and np.all(offsets == offsets[0]):
            return self.scan_other(source, shard, n)
        if self._label is None:
            labels = np.full(n, -1, np.int64)
        else:
            labels = self._read_labels(source, shard.fields, offsets)
        return {"offsets": offsets, "labels": labels}

    def _read_labels(self, source: Source, fields: Fields, offsets: np.ndarray) -> np.ndarray:
        assert self._label is not None
        encoding = encoding_kind(fields.encodings[self._label])
        where, n = locate(source, fields, offsets, self._label)
        values = source.read_extents(list(zip(where.tolist(), n.tolist(), strict=True)))
        dtype = self.int_encodings.get(encoding)
        if dtype is not None and dtype != "str":
            return np.array(
                [int(np.frombuffer(v, dtype)[0]) for v in values] if values else [], np.int64
            )
        out = []
        for v in values:
            value = pickle.loads(bytes(v)) if dtype is None else int(bytes(v))
            out.append(int(value))
        return np.array(out, np.int64)

    def read_shards(self) -> list[Shard]:
        """The shards of the dataset's index, in order.

        Raises
        ------
        NotAStoreError
            There is no index.
        CorruptStoreError, ConfigError
            It does not read, or describes a layout seqstore does not read.
        """
        raise NotImplementedError

    def scan_other(self, source: Source, shard: Shard, n: int) -> dict[str, np.ndarray]:
        """The table of a shard whose ``n`` samples are not in its sample table (all its
        offsets are equal): a subclass that reads such shards returns their labels and the
        rows of each of its ``batches``, and reads them in :meth:`read_other`."""
        raise ConfigError(
            f"shard '{source.name}' holds its samples in a layout seqstore does not read (not "
            "in its sample table); write it again with encoded images"
        )

    def read_other(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        """:meth:`read_run` of a shard that :meth:`scan_other` read."""
        raise NotImplementedError

    def read_run(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        if self._other[file] is not None:
            return self.read_other(file, start, stop)
        source, first = self.sources[file], int(self._bounds[file])
        fields = self.shards[file].fields
        starts = self._starts[start:stop].tolist()
        lengths = (self._ends[start:stop] - self._starts[start:stop]).tolist()
        name = self.shards[file].name
        pickled = encoding_kind(fields.encodings[self._image]) in self.pickle_encodings
        out = []
        for i, sample in zip(
            range(start, stop),
            source.read_extents(list(zip(starts, lengths, strict=True))),
            strict=True,
        ):
            try:
                lo, hi = fields.span(sample, self._image)
            except struct.error:
                lo, hi = 0, -1
            if not 0 <= lo <= hi <= len(sample):
                raise CorruptStoreError(
                    f"sample {i - first} of shard '{source.name}' is damaged (its fields run "
                    f"past its end); {self.remedy}"
                )
            data = bytes(sample[lo:hi])
            if pickled:
                data = self._unpickled_image(data, source.name, i - first)
            out.append((f"{name}#{i - first}", int(self._labels[i]), data))
        return out

    def _unpickled_image(self, data: bytes, where: str, i: int) -> bytes:
        value = pickle.loads(data)
        if not isinstance(value, (bytes, bytearray)):
            raise ConfigError(
                f"sample {i} of shard '{where}' unpickles to {type(value).__name__}, not the "
                "bytes of an encoded image"
            )
        return bytes(value)

    def verify_files(self) -> tuple[int, list[str]] | None:
        # docstring inherited
        checked, bad = 0, []
        for shard in self.shards:
            if not shard.hashes:
                continue
            source = self.place.source(shard.name)
            try:
                checked += check_hashes(source.name, shard.hashes, file_pieces(source), "")
            except CorruptStoreError:
                checked += 1
                bad.append(shard.name)
            finally:
                source.close()
        return (checked, bad) if checked else None

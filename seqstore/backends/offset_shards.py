"""Shard files that open with a table of their samples' offsets: MosaicML Streaming's MDS
shards and litdata's chunks, read in place.

Both projects lay a shard out as::

    uint32 n | uint32 offsets[n + 1] | ... | sample 0 | sample 1 | ... | sample n-1

(offsets from the start of the file; ``offsets[n]`` is where the last sample ends), and a
sample as a header of uint32 sizes followed by its fields' bytes, in order. MDS puts in the
header the sizes of the columns that have no fixed size (its columns sorted by name); litdata
those of every leaf of its pytree. :class:`Fields` describes a format's samples and finds a
field in one; :class:`OffsetShardsReader` reads the shards: a block is one read of a run of
samples, each image sliced out of its sample.

Labels are read at open, one small read per sample (from the sample's start or end where the
fields around the label have fixed sizes, else after its header), and kept with the offsets
in the index directory, tied to each shard's identity, as a tar shard's members are.

Compressed shards cannot be read in place: each is unpacked whole on first use, into a
local directory shared by processes (:class:`~seqstore.io.cache.ShardCache`), as both
projects' own loaders unpack them into their cache; its hash is checked then, where the
index records one.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import pickle
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import BackendNotFoundError, ConfigError, CorruptStoreError
from ..io.cache import ShardCache, cache_key
from ..io.local import LocalFile
from ..io.ranges import Source
from .in_place import FilesReader
from .index_cache import default_index_dir, kept_table

__all__ = ["Fields", "OffsetShardsReader", "Shard", "hasher", "unpack"]

_U32 = struct.Struct("<I")


@dataclass(frozen=True)
class Fields:
    """The fields of a dataset's samples.

    Attributes
    ----------
    names, encodings
        Each field's name and the writer's name for its encoding, in sample order.
    sizes
        Each field's fixed size in bytes; None where it varies.
    headed
        Whether the sample's header holds the field's size.
    """

    names: list[str]
    encodings: list[str]
    sizes: list[int | None]
    headed: list[bool]

    @property
    def header_bytes(self) -> int:
        """The length of a sample's header."""
        return 4 * sum(self.headed)

    def listing(self) -> str:
        """The fields and their encodings, for messages."""
        return ", ".join(f"{n} ({e})" for n, e in zip(self.names, self.encodings, strict=True))

    def span(self, sample: bytes | memoryview, i: int) -> tuple[int, int]:
        """Where field ``i`` is in ``sample`` (a whole sample's bytes)."""
        heads = struct.unpack_from(f"<{sum(self.headed)}I", sample, 0)
        pos, k = self.header_bytes, 0
        for j in range(i + 1):
            size = self.sizes[j]
            if self.headed[j]:
                size = heads[k]
                k += 1
            assert size is not None
            if j == i:
                return pos, pos + size
            pos += size
        raise IndexError(i)


@dataclass(frozen=True)
class Shard:
    """One shard as its dataset's index records it.

    Attributes
    ----------
    name
        The file as stored (the compressed one, where it is compressed), relative to the
        dataset.
    size
        Its size in bytes; None where the index does not record it.
    compression
        The compression of the whole file (``"zstd"``, ``"gz"``, ``"bz2"``, ``"br"``,
        ``"snappy"``, with or without ``":level"``); None for none.
    hashes
        Hex digests of the stored file by algorithm (``sha1``, ``xxh64`` ...).
    samples
        Its sample count, as the index records it.
    fields
        Its samples' fields.
    """

    name: str
    size: int | None
    compression: str | None
    hashes: dict[str, str]
    samples: int
    fields: Fields


def _decompressor(algo: str, where: str) -> Callable[[bytes], bytes]:
    """The function that decompresses a whole file of ``algo``, or one line naming the
    package to install."""
    family = algo.split(":", 1)[0]
    if family == "gz":
        return gzip.decompress
    if family == "bz2":
        return bz2.decompress
    packages = {"zstd": ("zstandard", "zstandard"), "br": ("brotli", "brotli")}
    packages["snappy"] = ("snappy", "python-snappy")
    if family not in packages:
        raise ConfigError(f"'{where}' is compressed with '{algo}', which seqstore does not read")
    module, package = packages[family]
    try:
        lib: Any = __import__(module)
    except ImportError:
        raise BackendNotFoundError(
            f"'{where}' is compressed with {family}: install the package '{package}' "
            f"(pip install {package}) to read it"
        ) from None
    if family == "zstd":
        return lambda data: lib.ZstdDecompressor().decompressobj().decompress(data)
    return lib.decompress  # type: ignore[no-any-return]


def hasher(algo: str) -> Any:
    """A hash object of ``algo`` (a hashlib name, or xxhash's ``xxh32``, ``xxh64``,
    ``xxh3_64``, ``xxh3_128``, ``xxh128``, as MDS names them); None where no installed
    package computes it."""
    if algo in hashlib.algorithms_available:
        return hashlib.new(algo)
    try:
        import xxhash
    except ImportError:
        return None
    make = getattr(xxhash, algo, None)
    return make() if make is not None else None


def _pieces(source: Source, step: int = 8 << 20) -> Iterator[bytes | bytearray | memoryview]:
    for offset in range(0, source.size, step):
        yield source.read(offset, min(step, source.size - offset))


def unpack(source: Source, shard: Shard, cache: ShardCache, remedy: str) -> Path:
    """The unpacked copy of a compressed shard in ``cache``, made on first use; the stored
    file's hashes are checked as it is unpacked.

    Raises
    ------
    CorruptStoreError
        A hash does not match, or the file does not decompress.
    """
    assert shard.compression is not None
    decompress = _decompressor(shard.compression, source.name)
    key = cache_key(source.name, source.identity)

    def populate(directory: Path) -> None:
        data = bytes(source.read(0, source.size))
        _check_hashes(source.name, shard.hashes, [data], remedy)
        try:
            raw = decompress(data)
        except Exception as exc:  # each library has its own error
            raise CorruptStoreError(
                f"shard '{source.name}' does not decompress ({shard.compression}: {exc}); {remedy}"
            ) from None
        (directory / "shard").write_bytes(raw)

    found = cache.fill(key, 2 * source.size, populate)
    if found is None:
        raise ConfigError(f"no room to unpack '{source.name}' in {cache.directory}")
    return found / "shard"


def _check_hashes(
    name: str, hashes: dict[str, str], chunks: Iterable[bytes | bytearray | memoryview], remedy: str
) -> bool:
    """Check, in one pass over ``chunks``, the hashes of ``hashes`` that can be computed
    here; whether any could."""
    found = {algo: hasher(algo) for algo in sorted(hashes)}
    found = {algo: h for algo, h in found.items() if h is not None}
    if not found:
        return False
    for chunk in chunks:
        for h in found.values():
            h.update(chunk)
    for algo, h in found.items():
        if h.hexdigest() != hashes[algo]:
            raise CorruptStoreError(
                f"shard '{name}' fails its {algo} hash (damaged or replaced); {remedy}"
            )
    return True


def _locate(
    source: Source, fields: Fields, offsets: np.ndarray, i: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where field ``i`` of each sample of a shard (``offsets``: its table) is in the file:
    offsets and lengths. Reads nothing where the fields before it, or those after it, all
    have fixed sizes; else reads each sample's header."""
    starts, ends = offsets[:-1], offsets[1:]
    before, after = fields.sizes[:i], fields.sizes[i + 1 :]
    own = fields.sizes[i]
    if own is not None and None not in before:
        at = starts + fields.header_bytes + sum(s for s in before if s)
        return at, np.full_like(starts, own)
    if own is not None and None not in after:
        return ends - sum(s for s in after if s) - own, np.full_like(starts, own)
    heads = source.read_extents([(int(s), fields.header_bytes) for s in starts.tolist()])
    at, lengths = [], []
    for start, head in zip(starts.tolist(), heads, strict=True):
        lo, hi = fields.span(head, i)
        at.append(start + lo)
        lengths.append(hi - lo)
    return np.array(at, np.int64), np.array(lengths, np.int64)


def _kind(encoding: str) -> str:
    """An encoding's family (litdata's ``image:png`` is an ``image``)."""
    return encoding.split(":", 1)[0]


def _having(fields: Fields, kinds: Iterable[str]) -> list[int]:
    """The fields whose encoding is of one of ``kinds``."""
    return [i for i, e in enumerate(fields.encodings) if _kind(e) in kinds]


class OffsetShardsReader(FilesReader):
    """Base of the readers of MDS shards and litdata chunks (see the module docstring).

    A subclass reads its index into :class:`Shard` rows and calls :meth:`open_shards`.
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

    def open_shards(
        self,
        shards: list[Shard],
        *,
        image_field: str | None,
        label_field: str | None,
        allow_pickle: bool,
        classes: str | os.PathLike[str] | Sequence[str] | None,
        index_dir: str | os.PathLike[str] | None,
        unpack_dir: str | os.PathLike[str] | None,
    ) -> None:
        """Open every shard (unpacking compressed ones), choose the fields, read the labels
        and describe the dataset."""
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
                lambda s=source, sh=shard: self._scan(s, sh),  # type: ignore[misc]
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
            found = _having(fields, self.image_encodings)
            if len(found) == 1:
                return found[0]
            if not found:
                pixels = _having(fields, self.pixel_encodings)
                if len(pixels) == 1:
                    self._refuse_pixels(fields, pixels[0])
                pickles = _having(fields, self.pickle_encodings)
                if len(pickles) == 1 and allow_pickle:
                    return pickles[0]
            raise ConfigError(
                f"cannot tell the image field of {self.writer} dataset '{where}' (its fields: "
                f"{fields.listing()}); choose it with image_field="
            )
        i = self._index(fields, chosen)
        encoding = _kind(fields.encodings[i])
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
            found = _having(fields, self.int_encodings)
            if len(found) > 1:
                raise ConfigError(
                    f"cannot tell the label field of {self.writer} dataset '{self.place.where}' "
                    f"(its fields: {fields.listing()}); choose it with label_field="
                )
            return found[0] if found else None
        i = self._index(fields, chosen)
        encoding = _kind(fields.encodings[i])
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
        encoding = _kind(fields.encodings[self._label])
        where, n = _locate(source, fields, offsets, self._label)
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
        pickled = _kind(fields.encodings[self._image]) in self.pickle_encodings
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
                checked += _check_hashes(source.name, shard.hashes, _pieces(source), "")
            except CorruptStoreError:
                checked += 1
                bad.append(shard.name)
            finally:
                source.close()
        return (checked, bad) if checked else None

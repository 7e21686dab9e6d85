"""litdata's chunks, read in place: ``index.json`` and ``chunk-R-N.bin`` as
``litdata.optimize`` writes them, on a local disk or in object storage, without the
``litdata`` package.

``index.json`` lists the chunks and, in its ``config``, the item's pytree (``data_spec``) and
each leaf's serializer (``data_format``); the chunks are read as :mod:`.offset_shards` says.
A field is named by its path in the item: ``image`` and ``label`` for a dict, ``0`` and
``1`` for a tuple, ``a.b`` for a nested dict.

- The image is the leaf serialized as ``jpeg`` (encoded JPEG), ``image`` (encoded image
  bytes) or ``bytes``, or the one ``image_field=`` names. A leaf stored as pixels (``pil``,
  ``numpy``, ``tensor``) is refused with one line; a ``pickle`` leaf is unpickled only with
  ``allow_pickle=True``.
- The label is the ``int`` leaf, or the one ``label_field=`` names; without one, -1.
- Items that are flat dicts without media serializers (``{"image": bytes, "label": int}``)
  are stored, since litdata 0.2.6x, as an Arrow IPC file at the end of the chunk, the
  sample table left empty: those are read with pyarrow (the ``parquet`` extra), by record
  batch, memory-mapped on a local disk and by ranged reads in object storage.
- Chunks compressed whole (``compression="zstd"``) are unpacked on first use. Chunks
  compressed per sample or per batch, encrypted ones, and other item loaders (tokens,
  Parquet) are refused with one line.
- litdata records no class names, nor checksums: ``classes`` is empty unless ``classes=``
  gives them, and ``info --verify`` has nothing to check.
"""

from __future__ import annotations

import functools
import json
import struct
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, CorruptStoreError
from ..io.fileobj import SourceFile
from ..io.per_process import ProcessLocal
from ..io.places import Place
from ..io.ranges import Source, Window
from .base import Backend
from .mds import INDEX, index_of, read_index
from .offset_shards import Fields, OffsetShardsReader, Shard
from .parquet.reader import pyarrow_parquet

__all__ = ["LitdataBackend", "LitdataReader"]

_REMEDY = "write the dataset again with litdata.optimize, or copy its files again"
#: Fixed sizes of litdata's numeric serializers (its header still holds them).
_FIXED = {"int": 8, "float": 8, "bool": 1}
#: The end of a chunk whose items are an Arrow IPC file: its length, then this.
_ARROW_MAGIC = b"LDARW01\0"


def arrow_file(source: Source) -> Any:
    """The Arrow IPC file at the end of a litdata chunk, opened with pyarrow: memory-mapped
    where the chunk is on this machine, else through ranged reads.

    Raises
    ------
    CorruptStoreError
        The chunk does not end with one.
    """
    pyarrow_parquet()  # one line naming the extra where pyarrow is missing
    import pyarrow as pa

    tail = bytes(source.read(max(0, source.size - 12), 12)) if source.size >= 12 else b""
    if len(tail) < 12 or tail[4:] != _ARROW_MAGIC:
        raise CorruptStoreError(
            f"litdata chunk '{source.name}' has neither samples nor an Arrow footer (cut short?); "
            f"{_REMEDY}"
        )
    length = struct.unpack("<I", tail[:4])[0]
    start = source.size - 12 - length
    path = source.local_path
    try:
        if path is not None:
            mapped = pa.memory_map(str(path))
            return pa.ipc.open_file(pa.BufferReader(mapped.read_buffer()[start : start + length]))
        return pa.ipc.open_file(SourceFile(Window(source, start, length)))
    except (pa.ArrowInvalid, ValueError, OSError) as exc:
        raise CorruptStoreError(
            f"the Arrow footer of litdata chunk '{source.name}' does not read ({exc}); {_REMEDY}"
        ) from None


def leaf_names(spec: Any) -> list[str]:
    """The paths of a pytree spec's leaves (``data_spec``, as torch's pytree dumps it)."""
    names: list[str] = []

    def walk(node: dict[str, Any], path: list[str]) -> None:
        children = node.get("children_spec") or []
        if node.get("type") is None and not children:
            names.append(".".join(path) or "0")
            return
        keys: list[Any] = list(range(len(children)))
        if node.get("type") in ("builtins.dict", "collections.OrderedDict"):
            context = node.get("context")
            keys = json.loads(context) if isinstance(context, str) else list(context or [])
        for key, child in zip(keys, children, strict=True):
            walk(child, [*path, str(key)])

    if isinstance(spec, str):
        spec = json.loads(spec)
    walk(spec[1] if isinstance(spec, list) else spec, [])
    return names


class LitdataReader(OffsetShardsReader):
    """Reader of litdata chunks in place (see the module docstring); its options are
    :class:`~seqstore.backends.offset_shards.OffsetShardsReader`'s (the image and label
    are leaves of the item, named by their path; a pickled one is a ``pickle`` leaf)."""

    format_name: ClassVar[str] = "litdata"
    writer: ClassVar[str] = "litdata"
    remedy: ClassVar[str] = _REMEDY
    image_encodings: ClassVar[frozenset[str]] = frozenset({"jpeg", "image", "bytes"})
    pixel_encodings: ClassVar[frozenset[str]] = frozenset(
        {"pil", "numpy", "tensor", "no_header_numpy", "no_header_tensor"}
    )
    pickle_encodings: ClassVar[frozenset[str]] = frozenset({"pickle"})
    int_encodings: ClassVar[dict[str, str]] = {"int": "<i8"}

    @functools.cached_property
    def _arrow_files(self) -> ProcessLocal[dict[int, Any]]:
        """This process's open Arrow footers of chunks, by chunk."""
        return ProcessLocal()

    def read_shards(self) -> list[Shard]:
        # docstring inherited
        where = self.place.where
        index = read_index(self.place, INDEX, _REMEDY)
        config, chunks = index.get("config"), index.get("chunks")
        if not isinstance(config, dict) or not isinstance(chunks, list):
            raise ConfigError(f"{INDEX} of '{where}' is not a litdata index (no config, chunks)")
        self._refuse_layouts(config)
        try:
            encodings = [str(e) for e in config["data_format"]]
            names = leaf_names(config["data_spec"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(
                f"{INDEX} of '{where}' has no readable data_format/data_spec ({exc}); {_REMEDY}"
            ) from None
        if len(names) != len(encodings):
            names = [str(i) for i in range(len(encodings))]
        fields = Fields(
            names=names,
            encodings=encodings,
            sizes=[_FIXED.get(e) for e in encodings],
            headed=[True] * len(encodings),
        )
        compression = config.get("compression")
        try:
            shards = [
                Shard(
                    name=str(c["filename"]),
                    size=None,
                    compression=compression,
                    hashes={},
                    samples=int(c["chunk_size"]),
                    fields=fields,
                )
                for c in chunks
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptStoreError(
                f"{INDEX} of '{where}' has a chunk entry without {exc}; {_REMEDY}"
            ) from None
        return shards

    def scan_other(self, source: Source, shard: Shard, n: int) -> dict[str, np.ndarray]:
        # docstring inherited
        import pyarrow as pa

        file = arrow_file(source)
        names = shard.fields.names
        label = names[self._label] if self._label is not None else None
        rows, labels = [], []
        for b in range(file.num_record_batches):
            batch = file.get_batch(b)
            rows.append(batch.num_rows)
            if label is None:
                labels.append(np.full(batch.num_rows, -1, np.int64))
            else:
                column = batch.column(label)
                if not pa.types.is_integer(column.type):
                    raise ConfigError(
                        f"'{label}' of '{source.name}' is {column.type}, not integers"
                    )
                labels.append(np.asarray(column.fill_null(-1).to_numpy(), np.int64))
        if sum(rows) != n:
            raise CorruptStoreError(
                f"the Arrow footer of litdata chunk '{source.name}' holds {sum(rows)} items, not "
                f"the {n} of its table; {_REMEDY}"
            )
        return {
            "offsets": np.zeros(n + 1, np.int64),
            "labels": np.concatenate(labels) if labels else np.empty(0, np.int64),
            "batches": np.array(rows, np.int64),
        }

    def read_other(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        files = self._arrow_files.get(dict)
        opened = files.get(file)
        if opened is None:
            opened = files[file] = arrow_file(self.sources[file])
        rows = self._other[file]
        assert rows is not None
        ends = np.cumsum(rows)
        first = int(self._bounds[file])
        image = self.shards[file].fields.names[self._image]
        name = self.shards[file].name
        out: list[tuple[str, int, bytes]] = []
        i = start
        while i < stop:
            row = i - first
            b = int(np.searchsorted(ends, row, side="right"))
            lo = int(ends[b] - rows[b])
            column = opened.get_batch(b).column(image)
            take = min(stop - i, int(ends[b]) - row)
            for k in range(row, row + take):
                data = column[k - lo].as_py()
                if not isinstance(data, bytes):
                    raise ConfigError(
                        f"item {k} of litdata chunk '{name}' has {type(data).__name__} in "
                        f"'{image}', not the bytes of an encoded image"
                    )
                out.append((f"{name}#{k}", int(self._labels[first + k]), data))
            i += take
        return out

    def close(self) -> None:
        # docstring inherited
        self._arrow_files.close()
        super().close()

    def _refuse_layouts(self, config: dict[str, Any]) -> None:
        where = self.place.where
        loader = config.get("item_loader", "PyTreeLoader")
        if loader != "PyTreeLoader":
            raise ConfigError(
                f"'{where}' was written with litdata's {loader}; seqstore reads the chunks of "
                "its default PyTreeLoader (items of images and labels)"
            )
        if config.get("encryption"):
            raise ConfigError(f"'{where}' is encrypted; seqstore reads unencrypted chunks")
        if config.get("compression") and config.get("compression_level") not in (None, "chunk"):
            raise ConfigError(
                f"'{where}' is compressed per {config['compression_level']}; seqstore reads "
                "chunks compressed whole (compression_level='chunk') or not compressed"
            )


class LitdataBackend(Backend):
    """litdata's chunks of images, read in place."""

    name: ClassVar[str] = "litdata"
    description: ClassVar[str] = "litdata chunks of images, as litdata.optimize writes them"
    reader_cls = LitdataReader

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        index = index_of(place)
        return index is not None and isinstance(index.get("chunks"), list)

"""Reading Parquet files of images in place (see :mod:`seqstore.backends.parquet`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ...errors import BackendNotFoundError, ConfigError, CorruptStoreError
from ...io.fileobj import SourceFile
from ...io.per_process import ProcessLocal
from ...io.places import Place
from ...io.ranges import Source
from ..in_place import FilesReader

__all__ = ["ParquetReader", "columns_of", "parquet_file", "pyarrow_parquet"]


def pyarrow_parquet() -> Any:
    """``pyarrow.parquet``, or one line naming the extra that installs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise BackendNotFoundError(
            "reading Parquet files needs the package 'pyarrow', which is not installed; "
            "run: pip install 'seqstore[parquet]'"
        ) from None
    return pq


def parquet_file(source: Source) -> Any:
    """A ``pyarrow.parquet.ParquetFile`` of ``source``: by its path where it is a file on
    this machine (pyarrow's own reads, memory-mapped), else through a file object over the
    source (ranged requests)."""
    pq = pyarrow_parquet()
    path = source.local_path
    if path is not None:
        return pq.ParquetFile(str(path), memory_map=True)
    return pq.ParquetFile(SourceFile(source))


class _Open:
    """What one process holds of a dataset: its open files and the last row group read."""

    def __init__(self) -> None:
        self.files: dict[int, Any] = {}
        self.group: tuple[int, int, Any] | None = None


class ParquetReader(FilesReader):
    """Reader of Parquet files of encoded images, in place, on a local disk or in object
    storage (see the module docstring).

    Parameters
    ----------
    location
        A directory (or prefix) of ``.parquet`` files, one file, or their
        :class:`~seqstore.io.places.Place`.
    image_field, label_field
        The columns of the image and of the integer label, where they cannot be told.
    classes
        Class names for the labels, where the schema has no ``ClassLabel``.
    """

    format_name: ClassVar[str] = "parquet"

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        image_field: str | None = None,
        label_field: str | None = None,
        classes: str | os.PathLike[str] | Sequence[str] | None = None,
    ) -> None:
        super().__init__(location)
        pyarrow_parquet()
        self.open_files(lambda name: name.endswith(".parquet"), ".parquet files")
        labels: list[np.ndarray] = []
        groups: list[list[int]] = []
        found_classes: list[str] = []
        for source in self.sources:
            try:
                meta = parquet_file(source)
            except Exception as exc:  # pyarrow's own errors: ArrowInvalid, OSError ...
                raise CorruptStoreError(
                    f"Parquet file '{source.name}' does not read ({exc}); write it again"
                ) from None
            image, label, names_of = columns_of(
                meta.schema_arrow, source.name, image_field, label_field
            )
            self._image, self._label = image, label
            found_classes = found_classes or names_of
            groups.append([meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups)])
            if label is None:
                labels.append(np.full(meta.metadata.num_rows, -1, np.int64))
            else:
                column = meta.read(columns=[label]).column(0)
                labels.append(np.asarray(column.fill_null(-1).to_numpy(), np.int64))
        self._labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        self._groups = groups
        per_file = [sum(g) for g in groups]
        self._bounds = np.cumsum([0, *per_file]).astype(np.int64)
        self._state: ProcessLocal[_Open] = ProcessLocal()
        self.describe(int(sum(s.size for s in self.sources)), classes, found_classes)

    def _group(self, state: _Open, f: int, g: int) -> Any:
        """The image bytes of row group ``g`` of file ``f``, an Arrow binary array (the last
        one read is kept; a row's bytes become a Python object only when it is read)."""
        if state.group is not None and state.group[:2] == (f, g):
            return state.group[2]
        pf = state.files.get(f)
        if pf is None:
            pf = state.files[f] = parquet_file(self.sources[f])
        try:
            column = pf.read_row_group(g, columns=[self._image]).column(0)
        except Exception as exc:
            raise CorruptStoreError(
                f"row group {g} of Parquet file '{self.sources[f].name}' does not read ({exc}); "
                "write it again"
            ) from None
        values = column.combine_chunks()
        if hasattr(values, "field") and values.type.num_fields:  # {bytes, path}
            values = values.field("bytes")
        state.group = (f, g, values)
        return values

    def read_run(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        state = self._state.get(_Open)
        out: list[tuple[str, int, bytes]] = []
        ends = np.cumsum(self._groups[file])
        name = self.files[file] or self.sources[file].name.rsplit("/", 1)[-1]
        i = start
        while i < stop:
            row = i - int(self._bounds[file])
            g = int(np.searchsorted(ends, row, side="right"))
            first = int(ends[g] - self._groups[file][g])
            images = self._group(state, file, g)
            take = min(stop - i, int(ends[g]) - row)
            for k in range(row, row + take):
                data = images[k - first].as_py()
                if data is None:
                    raise CorruptStoreError(
                        f"row {k} of Parquet file '{self.sources[file].name}' has no image "
                        "bytes (only a path?); seqstore reads images stored in the file"
                    )
                out.append((f"{name}#{k}", int(self._labels[i + k - row]), data))
            i += take
        return out

    def close(self) -> None:
        # docstring inherited
        self._state.close()
        super().close()


def columns_of(
    schema: Any, where: str, image_field: str | None, label_field: str | None
) -> tuple[str, str | None, list[str]]:
    """The image column, the label column (None: no labels) and the class names of a file
    of the Arrow schema ``schema`` (Parquet or Arrow).

    Raises
    ------
    ConfigError
        The columns cannot be told, or those named are not there (one line lists them).
    """
    import pyarrow as pa

    features: dict[str, Any] = {}
    raw = (schema.metadata or {}).get(b"huggingface")
    if raw:
        try:
            features = json.loads(raw).get("info", {}).get("features", {}) or {}
        except (ValueError, AttributeError):
            features = {}
    listing = ", ".join(f"{f.name} ({f.type})" for f in schema)

    def is_image(field: Any) -> bool:
        t = field.type
        if pa.types.is_struct(t):
            return t.get_field_index("bytes") >= 0
        return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t))

    image = image_field
    if image is None:
        named = [
            n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "Image"
        ]
        candidates = named or [f.name for f in schema if is_image(f)]
        if len(candidates) != 1:
            raise ConfigError(
                f"cannot tell the image column of file '{where}' (its columns: "
                f"{listing}); choose it with image_field="
            )
        image = candidates[0]
    if schema.get_field_index(image) < 0:
        raise ConfigError(f"file '{where}' has no column '{image}' (its columns: {listing})")
    label = label_field
    if label is None:
        named = [
            n for n, f in features.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"
        ]
        ints = [f.name for f in schema if pa.types.is_integer(f.type)]
        candidates = named or ints
        if len(candidates) > 1:
            raise ConfigError(
                f"cannot tell the label column of file '{where}' (its columns: "
                f"{listing}); choose it with label_field="
            )
        label = candidates[0] if candidates else None
    elif schema.get_field_index(label) < 0:
        raise ConfigError(f"file '{where}' has no column '{label}' (its columns: {listing})")
    names = features.get(label or "", {}) if label else {}
    classes = list(names.get("names", [])) if isinstance(names, dict) else []
    return image, label, classes

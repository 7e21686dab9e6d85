"""The Arrow files that Hugging Face ``datasets``' ``Dataset.save_to_disk`` writes
(``data-00000-of-00001.arrow`` beside ``state.json`` and ``dataset_info.json``), read in
place with pyarrow.

They are Arrow IPC streams, which have no index of their record batches: a file is read
whole, memory-mapped where it is on this machine (nothing is copied; pages come as they are
touched), else into memory once per process, so that a dataset in object storage is best
read with ``cache_dir``, or converted. The columns are told as in a Parquet file (the
``huggingface`` schema metadata names the ``Image`` and ``ClassLabel`` features).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ...errors import CorruptStoreError
from ...io.per_process import ProcessLocal
from ...io.places import Place
from ...io.ranges import Source
from ..base import Backend
from ..in_place import FilesReader
from .reader import columns_of, pyarrow_parquet

__all__ = ["ArrowBackend", "ArrowReader", "arrow_table"]

_REMEDY = "save the dataset again (Dataset.save_to_disk)"


def arrow_table(source: Source) -> Any:
    """The table of an Arrow IPC stream file: memory-mapped where the file is on this
    machine, else read whole.

    Raises
    ------
    CorruptStoreError
        It is not an Arrow stream, or is cut short.
    """
    pyarrow_parquet()
    import pyarrow as pa

    try:
        path = source.local_path
        data = (
            pa.memory_map(str(path))
            if path is not None
            else pa.py_buffer(bytes(source.read(0, source.size)))
        )
        return pa.ipc.open_stream(data).read_all()
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptStoreError(
            f"Arrow file '{source.name}' does not read ({exc}); {_REMEDY}"
        ) from None


def _data_files(place: Place) -> list[str] | None:
    """The data files ``state.json`` lists, in order; None where it lists none."""
    try:
        state = json.loads(place.read_bytes("state.json"))
        return [str(f["filename"]) for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ArrowReader(FilesReader):
    """Reader of a dataset saved by ``Dataset.save_to_disk``, in place (see the module
    docstring).

    Parameters
    ----------
    location
        The directory (or prefix) that ``save_to_disk`` wrote, one ``.arrow`` file, or
        their place.
    image_field, label_field
        The columns of the image and of the integer label, where they cannot be told.
    classes
        Class names for the labels, where the schema has no ``ClassLabel``.
    """

    format_name: ClassVar[str] = "arrow"

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
        listed = _data_files(self.place)
        self.open_files(lambda name: name.endswith(".arrow"), ".arrow files (save_to_disk)")
        if listed is not None and self.files != [""]:
            missing = sorted(set(listed) - set(self.files))
            if missing:
                raise CorruptStoreError(
                    f"'{self.place.where}' lacks the file '{missing[0]}' its state.json lists; "
                    f"{_REMEDY}"
                )
            self.files = listed
            self.sources = [self.place.source(name) for name in listed]
        self._tables: ProcessLocal[dict[int, Any]] = ProcessLocal()
        labels: list[np.ndarray] = []
        found: list[str] = []
        for f in range(len(self.sources)):
            table = self._table(f)
            image, label, names = columns_of(
                table.schema, self.sources[f].name, image_field, label_field
            )
            self._image, found = image, found or names
            if label is None:
                labels.append(np.full(table.num_rows, -1, np.int64))
            else:
                column = table.column(label).fill_null(-1)
                labels.append(np.asarray(column.to_numpy(), np.int64))
        self._labels = np.concatenate(labels) if labels else np.empty(0, np.int64)
        self._bounds = np.cumsum([0] + [len(x) for x in labels]).astype(np.int64)
        self.describe(int(sum(s.size for s in self.sources)), classes, found)

    def _table(self, f: int) -> Any:
        tables = self._tables.get(dict)
        if f not in tables:
            tables[f] = arrow_table(self.sources[f])
        return tables[f]

    def read_run(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        first = int(self._bounds[file])
        values = self._table(file).column(self._image).slice(start - first, stop - start)
        values = values.combine_chunks()
        if values.type.num_fields:  # {bytes, path}
            values = values.field("bytes")
        name = self.files[file] or self.sources[file].name.rsplit("/", 1)[-1]
        out = []
        for k, value in enumerate(values):
            data = value.as_py()
            row = start - first + k
            if data is None:
                raise CorruptStoreError(
                    f"row {row} of Arrow file '{self.sources[file].name}' has no image bytes "
                    "(only a path?); seqstore reads images stored in the file"
                )
            out.append((f"{name}#{row}", int(self._labels[start + k]), data))
        return out

    def close(self) -> None:
        # docstring inherited
        self._tables.close()
        super().close()


class ArrowBackend(Backend):
    """A dataset saved by Hugging Face datasets' save_to_disk, read in place."""

    name: ClassVar[str] = "arrow"
    description: ClassVar[str] = "Arrow files of images, as datasets' save_to_disk writes them"
    reader_cls = ArrowReader

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        local = place.local
        if local is not None:
            if local.is_file():
                return local.name.endswith(".arrow")
            return (local / "state.json").is_file() and any(local.glob("*.arrow"))
        try:
            return place.exists("state.json") and any(n.endswith(".arrow") for n in place.files())
        except OSError:
            return False

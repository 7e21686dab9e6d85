"""Writing Parquet files that Hugging Face ``datasets`` loads with ``Image`` and
``ClassLabel`` features, as the Hub lays them out.

The files are ``data/train-NNNNN-of-MMMMM.parquet``, a new one once the last holds
``shard_bytes`` of images (``convert --shard-mb``), each with two columns: ``image``, a
struct of the encoded ``bytes`` and a null ``path`` (``datasets``' ``Image`` feature), and
``label`` (int64; -1 for a record without one). The schema's ``huggingface`` metadata
names the features, the ``ClassLabel``'s names being the store's classes, so that
``datasets.load_dataset("parquet", data_files=...)`` gives them back typed. Row groups
hold 100 rows, as ``datasets`` writes image datasets, and at most 4 MB of images. The
store's manifest sits beside ``data/``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ...records import Record
from ..writer import ShardFilesWriter, ensure_space
from .reader import pyarrow_parquet

__all__ = ["ParquetWriter"]

# Row groups as datasets writes them for images (100 rows), and never over 4 MB (the Loader's
# default block): a block of records is read as the row groups that hold it, so a group much
# larger than a block would be read once per block.
_GROUP_ROWS = 100
_GROUP_BYTES = 4 << 20


class ParquetWriter(ShardFilesWriter):
    """Writer of Parquet files in Hugging Face datasets' layout (see the module docstring).

    Parameters
    ----------
    path, classes, overwrite, provenance, shard_bytes
        See :class:`~seqstore.backends.writer.ShardFilesWriter`.
    """

    format = "parquet"
    format_version = 1

    def _schema(self) -> Any:
        import pyarrow as pa

        label: dict[str, Any] = (
            {"names": list(self.classes), "_type": "ClassLabel"}
            if self.classes
            else {"dtype": "int64", "_type": "Value"}
        )
        features = {"image": {"_type": "Image"}, "label": label}
        return pa.schema(
            [
                ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                ("label", pa.int64()),
            ],
            metadata={"huggingface": json.dumps({"info": {"features": features}})},
        )

    def _open(self) -> None:
        pyarrow_parquet()
        (self.directory / "data").mkdir()
        self._file: Any = None
        self._names: list[str] = []
        self._rows: list[Record] = []
        self._row_bytes = 0

    def _next_file(self) -> None:
        self._close_file()
        name = f"data/part-{len(self._names):05d}.parquet"
        self._names.append(name)
        # Encoded images do not compress: their column is stored as it is, which spares the
        # readers a decompression of every byte (the labels are compressed).
        self._file = pyarrow_parquet().ParquetWriter(
            self.directory / name,
            self._schema(),
            compression={"image.bytes": "none", "image.path": "snappy", "label": "snappy"},
        )

    def _close_file(self) -> None:
        self._flush()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _flush(self) -> None:
        if not self._rows:
            return
        import pyarrow as pa

        ensure_space(self.directory, self._row_bytes + 4096 * len(self._rows))
        table = pa.table(
            {
                "image": [{"bytes": r.data, "path": None} for r in self._rows],
                "label": [r.label for r in self._rows],
            },
            schema=self._schema(),
        )
        self._file.write_table(table)
        self._rows, self._row_bytes = [], 0

    def _write(self, record: Record) -> None:
        if self.starts_new_file(len(record.data), self._file is not None):
            self._next_file()
        self._rows.append(record)
        self._row_bytes += len(record.data)
        if len(self._rows) >= _GROUP_ROWS or self._row_bytes >= _GROUP_BYTES:
            self._flush()

    def _finish(self) -> None:
        if self._file is None:  # no records: one empty file, which readers read as such
            self._next_file()
        self._close_file()
        final = []
        for i, name in enumerate(self._names):
            target = f"data/train-{i:05d}-of-{len(self._names):05d}.parquet"
            (self.directory / name).rename(self.directory / target)
            with open(self.directory / target, "rb") as f:
                os.fsync(f.fileno())
            final.append(target)
        self.data_files = tuple(final)  # type: ignore[misc]

    def _abort(self) -> None:
        if getattr(self, "_file", None) is not None:
            self._file.close()

"""Writing HDF5 stores in one pass (the layout: :mod:`.layout`).

libhdf5 does not survive a full disk: once a write fails for want of space, closing the file
(or the interpreter's exit) crashes the process. So the writer checks the free space before
every append and stops with one line while it still can.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ...errors import CorruptStoreError
from ...records import Record, encode_key
from ..writer import Writer, ensure_space
from .layout import (
    BYTES_CHUNK,
    DATA_FILE,
    DTYPES,
    INDEX,
    PER_RECORD,
    ROWS_CHUNK,
    index_digest_of,
    read_records,
    read_slice,
)

__all__ = ["HDF5Writer"]


class HDF5Writer(Writer):
    """Writer of a seqstore HDF5 store.

    Records are buffered and appended in batches of ``batch_bytes``, each after a check that
    the disk has room for it (see the module docstring).

    Parameters
    ----------
    path, classes, overwrite, provenance, resume
        See :class:`~seqstore.backends.writer.Writer`.
    batch_bytes
        Bytes of records buffered before each append.
    """

    format = "hdf5"
    format_version = 2
    data_files = (DATA_FILE,)
    resumable = True

    def __init__(
        self, path: str | os.PathLike[str], *, batch_bytes: int = 64 << 20, **kwargs: Any
    ) -> None:
        self.batch_bytes = batch_bytes
        super().__init__(path, **kwargs)

    def _open(self) -> None:
        ensure_space(self.directory, 0)
        f = h5py.File(self.directory / DATA_FILE, "w", libver="latest")
        self._file = f
        for name, chunk in (("images", BYTES_CHUNK), ("keys", ROWS_CHUNK)):
            f.create_dataset(name, (0,), np.uint8, maxshape=(None,), chunks=(chunk,))
        for name in ("offsets", "key_offsets"):
            f.create_dataset(
                name, data=np.zeros(1, np.uint64), maxshape=(None,), chunks=(ROWS_CHUNK,)
            )
        for name in PER_RECORD:
            f.create_dataset(name, (0,), DTYPES[name], maxshape=(None,), chunks=(ROWS_CHUNK,))
        f.attrs["seqstore_format"] = self.format
        f.attrs["seqstore_format_version"] = self.format_version
        # Single-writer/multiple-reader mode keeps the file readable however the writer
        # dies: a killed conversion's records can be read back (and resumed) from it.
        f.swmr_mode = True
        # Image bytes are copied once, into a buffer reused across batches, then appended.
        self._buffer = np.empty(self.batch_bytes, np.uint8)
        self._pending: list[Record] = []
        self._pending_bytes = 0
        self._image_end = 0
        self._key_end = 0

    def _reopen(self) -> None:
        # libhdf5 will not reopen for writing a file whose writer never closed it. It was
        # written in SWMR mode, so it opens as a SWMR reader; the checkpointed records are
        # copied out of it into a new file, each checked against its checksum.
        killed = self.directory / (DATA_FILE + ".killed")
        (self.directory / DATA_FILE).rename(killed)
        n, self.num_records, self.total_bytes = self.num_records, 0, 0
        self._open()
        try:
            with h5py.File(killed, "r", swmr=True) as old:
                index = {name: old[name][: n + 1 if "offsets" in name else n] for name in INDEX}
                if len(index["offsets"]) != n + 1 or len(index["labels"]) != n:
                    raise ValueError(f"it holds fewer than the {n} records of its checkpoint")
                for start in range(0, n, ROWS_CHUNK):
                    for record in read_records(
                        lambda name, a, b: read_slice(old[name], a, b),
                        index,
                        start,
                        min(start + ROWS_CHUNK, n),
                    ):
                        if not record.verify():
                            raise ValueError(f"record '{record.key}' fails its checksum")
                        self.write(record)
        except (OSError, KeyError, ValueError) as exc:
            raise CorruptStoreError(f"the killed write's data file is damaged ({exc})") from None
        killed.unlink()

    def _write(self, record: Record) -> None:
        size = len(record.data)
        if self._pending_bytes + size > self.batch_bytes:
            self._flush()
        if size > self.batch_bytes:
            self._buffer = np.empty(size, np.uint8)
        self._buffer[self._pending_bytes : self._pending_bytes + size] = np.frombuffer(
            record.data, np.uint8
        )
        self._pending.append(record)
        self._pending_bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        f = self._file
        recs = self._pending
        keys = [encode_key(r.key) for r in recs]
        ensure_space(self.directory, self._pending_bytes + sum(map(len, keys)) + 40 * len(recs))
        image_ends = self._image_end + np.cumsum([len(r.data) for r in recs], dtype=np.uint64)
        key_ends = self._key_end + np.cumsum([len(k) for k in keys], dtype=np.uint64)
        _append(f["images"], self._buffer[: self._pending_bytes])
        _append(f["keys"], np.frombuffer(b"".join(keys), np.uint8))
        _append(f["offsets"], image_ends)
        _append(f["key_offsets"], key_ends)
        _append(f["labels"], np.array([r.label for r in recs], np.int32))
        _append(f["widths"], np.array([r.width for r in recs], np.uint32))
        _append(f["heights"], np.array([r.height for r in recs], np.uint32))
        _append(f["checksums"], np.array([r.checksum for r in recs], np.uint32))
        self._image_end = int(image_ends[-1])
        self._key_end = int(key_ends[-1])
        self._pending = []
        self._pending_bytes = 0

    def _sync(self) -> None:
        self._flush()
        self._file.flush()
        _fsync(self.directory / DATA_FILE)

    def _finish(self) -> None:
        self._flush()
        self._digest = index_digest_of({name: self._file[name][()] for name in INDEX})
        self._file.close()
        # The manifest that follows declares the store complete: the data must be on disk first.
        _fsync(self.directory / DATA_FILE)

    def _index_digest(self) -> str | None:
        return self._digest

    def _abort(self) -> None:
        if hasattr(self, "_file"):  # _open may have failed before making it
            self._file.close()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append(dataset: h5py.Dataset, values: np.ndarray) -> None:
    n = dataset.shape[0]
    dataset.resize((n + len(values),))
    dataset[n:] = values

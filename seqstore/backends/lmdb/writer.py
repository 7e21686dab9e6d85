"""Writing LMDB stores in one pass (the layout: :mod:`.layout`)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import lmdb
import numpy as np

from ...errors import CorruptStoreError, SeqstoreError
from ...manifest import index_digest
from ...records import Record
from ..writer import Writer, ensure_space
from .layout import CHECKSUMS_KEY, DATA_FILE, HEADER, LABELS_KEY, encode_record, index_key

__all__ = ["LMDBWriter"]

INITIAL_MAP_SIZE = 1 << 28


class LMDBWriter(Writer):
    """Writer of a seqstore LMDB store.

    Records are committed in batches; when a batch does not fit in the map, the map is
    doubled and the batch retried, so no size has to be guessed up front. Each commit is a
    point a killed conversion can resume from (:meth:`~seqstore.backends.writer.Writer.checkpoint`).

    Parameters
    ----------
    path, classes, overwrite, provenance, resume
        See :class:`~seqstore.backends.writer.Writer`.
    batch_bytes
        Bytes of records per write transaction.
    """

    format = "lmdb"
    format_version = 2
    data_files = (DATA_FILE,)
    resumable = True

    def __init__(
        self, path: str | os.PathLike[str], *, batch_bytes: int = 64 << 20, **kwargs: Any
    ) -> None:
        self.batch_bytes = batch_bytes
        super().__init__(path, **kwargs)

    def _open(self) -> None:
        self._env = lmdb.open(
            str(self.directory),
            subdir=True,
            map_size=INITIAL_MAP_SIZE,
            metasync=False,
            sync=False,
            meminit=False,
            max_dbs=0,
        )
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_size = 0
        self._labels: list[int] = []
        self._checksums: list[int] = []

    def _reopen(self) -> None:
        self._open()
        self._env.set_mapsize(
            max(INITIAL_MAP_SIZE, (self.directory / DATA_FILE).stat().st_size * 2)
        )
        n = self.num_records
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor()
                if cursor.set_range(index_key(n)):  # records past the checkpoint: cut them
                    while cursor.delete():
                        pass
                for value in txn.cursor().iternext(keys=False, values=True):
                    if len(self._labels) == n:
                        break
                    label, _w, _h, crc, _k = HEADER.unpack_from(value)
                    self._labels.append(label)
                    self._checksums.append(crc)
        except lmdb.Error as exc:
            raise self._failed(exc) from None
        if len(self._labels) != n:
            raise CorruptStoreError(
                f"the checkpoint of '{self.path}' counts {n} records but its data holds "
                f"{len(self._labels)}; convert again without --resume"
            )

    def _write(self, record: Record) -> None:
        value = encode_record(record)
        self._batch.append((index_key(self.num_records), value))
        self._batch_size += len(value)
        self._labels.append(record.label)
        self._checksums.append(record.checksum)
        if self._batch_size >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._put(self._batch, append=True)
        self._batch = []
        self._batch_size = 0

    def _put(self, items: list[tuple[bytes, bytes]], *, append: bool) -> None:
        ensure_space(self.directory, sum(len(v) for _, v in items) * 2)
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    consumed, added = txn.cursor().putmulti(items, append=append)
                    if added != len(items):
                        raise RuntimeError(f"LMDB store '{self.path}' refused duplicate keys")
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                raise self._failed(exc) from None

    def _failed(self, exc: lmdb.Error) -> SeqstoreError:
        free = shutil.disk_usage(self.directory).free
        return SeqstoreError(
            f"writing LMDB store '{self.path}' failed ({exc}; {free / 1e6:.0f} MB free on its "
            "disk); free some space or choose another destination, then convert again"
        )

    def _sync(self) -> None:
        self._flush()
        self._env.sync(True)

    def _finish(self) -> None:
        self._flush()
        self._index = (
            np.asarray(self._labels, np.int32).tobytes(),
            np.asarray(self._checksums, np.uint32).tobytes(),
        )
        self._put([(LABELS_KEY, self._index[0]), (CHECKSUMS_KEY, self._index[1])], append=False)
        self._env.sync(True)
        self._env.close()
        lock = self.directory / "lock.mdb"
        if lock.exists():
            lock.unlink()

    def _index_digest(self) -> str | None:
        return index_digest(*self._index)

    def _abort(self) -> None:
        if hasattr(self, "_env"):  # _open may have failed before making it
            self._env.close()

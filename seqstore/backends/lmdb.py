"""LMDB stores: one B-tree, records under ordered keys, read with a cursor.

Layout of a store directory::

    seqstore.json     manifest (format "lmdb")
    data.mdb          the LMDB environment (lock.mdb beside it while writing)

Record ``i`` lives under the 8-byte big-endian key ``i``, so key order is write order and a
cursor walking ``[start, stop)`` reads consecutive leaf pages: a sequential read. Its value is
a fixed header (label, width, height, CRC-32, key length), the UTF-8 key, then the image bytes.
The labels of all records are also kept under one extra key, so the engine and the benchmark
can get them without reading any image.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, ClassVar

import lmdb
import numpy as np

from ..manifest import Manifest, read_manifest
from ..records import Record
from .base import Backend, Reader, Writer

__all__ = ["LMDBBackend", "LMDBReader", "LMDBWriter"]

_HEADER = struct.Struct("<iIIIH")  # label, width, height, crc32, key length
_LABELS_KEY = b"\xffseqstore:labels"
_INITIAL_MAP_SIZE = 1 << 28


# py-lmdb allows one open environment per path and process, and a forked child inherits the
# parent's record of it. So read-only environments are shared by every reader of a path in
# a process, and an environment inherited over fork is closed before the child opens its own:
# without a lock table (lock=False) that only unmaps the child's copy.
_open_envs: dict[str, tuple[int, lmdb.Environment]] = {}


def shared_env(path: Path, **options: Any) -> lmdb.Environment:
    """The read-only LMDB environment of ``path`` for this process, opened on first use."""
    key = str(path.resolve())
    pid = os.getpid()
    entry = _open_envs.get(key)
    if entry is not None:
        owner, env = entry
        if owner == pid:
            return env
        env.close()
    env = lmdb.open(key, readonly=True, lock=False, meminit=False, **options)
    _open_envs[key] = (pid, env)
    return env


def release_env(path: Path) -> None:
    """Close this process's shared environment of ``path``, if it has one."""
    entry = _open_envs.pop(str(path.resolve()), None)
    if entry is not None and entry[0] == os.getpid():
        entry[1].close()


def _index_key(i: int) -> bytes:
    return i.to_bytes(8, "big")


def _encode(record: Record) -> bytes:
    key = record.key.encode("utf-8")
    header = _HEADER.pack(record.label, record.width, record.height, record.checksum, len(key))
    return b"".join((header, key, record.data))


def _decode(value: memoryview | bytes) -> Record:
    label, width, height, crc, key_len = _HEADER.unpack_from(value)
    key_end = _HEADER.size + key_len
    key = bytes(value[_HEADER.size : key_end]).decode("utf-8")
    return Record(key, label, bytes(value[key_end:]), width, height, crc)


class LMDBReader(Reader[lmdb.Environment]):
    """Reader of a seqstore LMDB store.

    Parameters
    ----------
    path
        The store directory.
    readahead
        Let the OS read ahead of the cursor. Good for the sequential block reads seqstore
        does; turn off only for random access to a store much larger than RAM.
    """

    def __init__(self, path: str | os.PathLike[str], *, readahead: bool = True) -> None:
        super().__init__(path)
        self.readahead = readahead
        self._manifest = read_manifest(self.path)

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def handle(self) -> lmdb.Environment:
        # docstring inherited
        return shared_env(self.path, subdir=True, readahead=self.readahead, max_readers=1024)

    def _open_handle(self) -> lmdb.Environment:
        return self.handle

    def close(self) -> None:
        # docstring inherited
        release_env(self.path)

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        out: list[Record] = []
        with self.handle.begin(buffers=True) as txn:
            cursor = txn.cursor()
            if not cursor.set_key(_index_key(start)):
                raise KeyError(f"record {start} is missing from LMDB store '{self.path}'")
            for value in cursor.iternext(keys=False, values=True):
                out.append(_decode(value))
                if len(out) == stop - start:
                    break
        if len(out) != stop - start:
            raise KeyError(f"LMDB store '{self.path}' ends before record {start + len(out)}")
        return out

    def labels(self) -> np.ndarray:
        # docstring inherited
        with self.handle.begin() as txn:
            raw = txn.get(_LABELS_KEY)
        if raw is None:
            return super().labels()
        return np.frombuffer(raw, np.int32).astype(np.int64)


class LMDBWriter(Writer):
    """Writer of a seqstore LMDB store.

    Records are committed in batches; when a batch does not fit in the map, the map is
    doubled and the batch retried, so no size has to be guessed up front.

    Parameters
    ----------
    path, classes, overwrite, provenance
        See :class:`~seqstore.backends.base.Writer`.
    batch_bytes
        Bytes of records per write transaction.
    """

    format = "lmdb"
    format_version = 1

    def __init__(
        self, path: str | os.PathLike[str], *, batch_bytes: int = 64 << 20, **kwargs: Any
    ) -> None:
        self.batch_bytes = batch_bytes
        super().__init__(path, **kwargs)

    def _open(self) -> None:
        release_env(self.path)
        self._env = lmdb.open(
            str(self.path),
            subdir=True,
            map_size=_INITIAL_MAP_SIZE,
            metasync=False,
            sync=False,
            meminit=False,
            max_dbs=0,
        )
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_size = 0
        self._labels: list[int] = []

    def _write(self, record: Record) -> None:
        value = _encode(record)
        self._batch.append((_index_key(self.num_records), value))
        self._batch_size += len(value)
        self._labels.append(record.label)
        if self._batch_size >= self.batch_bytes:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._put(self._batch, append=True)
        self._batch = []
        self._batch_size = 0

    def _put(self, items: list[tuple[bytes, bytes]], *, append: bool) -> None:
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    consumed, added = txn.cursor().putmulti(items, append=append)
                    if added != len(items):
                        raise RuntimeError(f"LMDB store '{self.path}' refused duplicate keys")
                return
            except lmdb.MapFullError:
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    def _finish(self) -> None:
        self._flush()
        labels = np.asarray(self._labels, np.int32).tobytes()
        self._put([(_LABELS_KEY, labels)], append=False)
        self._env.sync(True)
        self._env.close()
        lock = self.path / "lock.mdb"
        if lock.exists():
            lock.unlink()

    def _abort(self) -> None:
        self._env.close()


class LMDBBackend(Backend):
    """One LMDB environment per store; fast sequential cursors and cheap random access."""

    name: ClassVar[str] = "lmdb"
    description: ClassVar[str] = "LMDB B-tree, records under ordered keys"

    @classmethod
    def open_reader(cls, path: str | os.PathLike[str], **options: Any) -> LMDBReader:
        # docstring inherited
        return LMDBReader(Path(path), **options)

    @classmethod
    def open_writer(cls, path: str | os.PathLike[str], **kwargs: Any) -> LMDBWriter:
        # docstring inherited
        return LMDBWriter(path, **kwargs)

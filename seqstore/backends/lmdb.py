"""LMDB stores: one B-tree, records under ordered keys, read with a cursor.

Layout of a store directory::

    seqstore.json     manifest (format "lmdb")
    data.mdb          the LMDB environment

Record ``i`` lives under the 8-byte big-endian key ``i``, so key order is write order and a
cursor walking ``[start, stop)`` reads consecutive leaf pages: a sequential read. Its value is
a fixed header (label, width, height, CRC-32, key length), the key, then the image bytes.
The labels and checksums of all records are also kept under two extra keys, so the engine
and the benchmark can get them without reading any image; their digest is the manifest's
``index_digest``.

Layout version 2 (seqstore 0.2) checksums the key, label and size with the bytes; version 1
stores are refused with a line that says to convert again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import lmdb
import numpy as np

from ..errors import CorruptStoreError, NotAStoreError, SeqstoreError
from ..manifest import Manifest
from ..records import Record, encode_key
from .base import Backend, Reader, Writer, ensure_space
from .staging import read_store_manifest

__all__ = ["LMDBBackend", "LMDBReader", "LMDBWriter"]

_HEADER = struct.Struct("<iIIIH")  # label, width, height, crc32, key length
_LABELS_KEY = b"\xffseqstore:labels"
_CHECKSUMS_KEY = b"\xffseqstore:checksums"
_INITIAL_MAP_SIZE = 1 << 28
DATA_FILE = "data.mdb"
_META = struct.Struct("<I")  # at byte 16 of a meta page: LMDB's magic


@dataclass
class _Env:
    pid: int
    file_id: tuple[int, ...]
    env: lmdb.Environment
    users: int


# py-lmdb allows one open environment per path and process, so read-only environments are
# shared by the readers of a path in a process, counted, and closed with the last of them.
# An entry is tied to the identity of the data file (device, inode, size, mtime): a store
# replaced at the same path is a new file, and never read through the old one's environment.
# A forked child inherits the parent's entries; it closes them before opening its own:
# without a lock table (lock=False) that only unmaps the child's copy.
_envs: dict[str, _Env] = {}


def _data_file(path: Path, subdir: bool) -> Path:
    return path / DATA_FILE if subdir else path


def check_lmdb_file(file: Path) -> None:
    """Refuse an LMDB file shorter than its own meta pages say (it would crash on SIGBUS).

    Raises
    ------
    CorruptStoreError
        The file is truncated, or its meta pages are not LMDB's.
    """
    try:
        with open(file, "rb") as f:
            head = f.read(2 * 65536)
    except OSError as exc:
        raise NotAStoreError(f"cannot read LMDB file '{file}': {exc.strerror}") from None
    size = file.stat().st_size
    metas = []
    psize = struct.unpack_from("<I", head, 40)[0] if len(head) >= 44 else 0
    for page in (0, 1):
        off = page * psize
        if (
            psize < 512
            or off + 152 > len(head)
            or _META.unpack_from(head, off + 16)[0] != 0xBEEFC0DE
        ):
            raise CorruptStoreError(
                f"'{file}' is not a whole LMDB file (its meta pages are missing or damaged); "
                "re-create the store with seqstore convert"
            )
        metas.append(struct.unpack_from("<QQ", head, off + 136))  # last page, txn id
    last_page = max(metas, key=lambda m: m[1])[0]
    if size < (last_page + 1) * psize:
        raise CorruptStoreError(
            f"LMDB file '{file}' is truncated ({size} bytes; its pages need "
            f"{(last_page + 1) * psize}); re-create the store with seqstore convert"
        )


def acquire_env(path: Path, *, subdir: bool, **options: Any) -> tuple[lmdb.Environment, Any]:
    """This process's read-only environment of the LMDB data at ``path``, and a token for
    :func:`release_env`. The file is checked (:func:`check_lmdb_file`) before it is mapped."""
    file = _data_file(path, subdir)
    key = str(path.resolve())
    st = file.stat()
    file_id = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    pid = os.getpid()
    entry = _envs.get(key)
    if entry is not None and entry.pid == pid and entry.file_id == file_id:
        entry.users += 1
        return entry.env, (key, file_id, pid)
    if entry is not None:  # inherited over fork, or the file was replaced since
        entry.env.close()
        del _envs[key]
    check_lmdb_file(file)
    env = lmdb.open(key, readonly=True, lock=False, meminit=False, subdir=subdir, **options)
    _envs[key] = _Env(pid, file_id, env, 1)
    return env, (key, file_id, pid)


def release_env(token: Any) -> None:
    """Give back an environment from :func:`acquire_env`; the last user closes it."""
    key, file_id, pid = token
    entry = _envs.get(key)
    if entry is not None and entry.pid == pid == os.getpid() and entry.file_id == file_id:
        entry.users -= 1
        if entry.users <= 0:
            entry.env.close()
            del _envs[key]


def env_is_current(env: lmdb.Environment, token: Any) -> bool:
    """Whether ``env`` is still this process's environment of its path (not closed because
    the store was replaced and a newer reader opened the new one)."""
    entry = _envs.get(token[0])
    return entry is not None and entry.env is env


class SharedEnvReader(Reader[lmdb.Environment]):
    """A reader whose handle is a shared, counted LMDB environment (see :func:`acquire_env`).

    Subclasses set :attr:`subdir` and may override :meth:`_env_options`.
    """

    subdir: ClassVar[bool] = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path)
        self._env: lmdb.Environment | None = None
        self._env_token: Any = None
        self._release: weakref.finalize | None = None

    def _env_options(self) -> dict[str, Any]:
        return {}

    @property
    def handle(self) -> lmdb.Environment:
        # docstring inherited
        if self._env is None or self._env_token[2] != os.getpid():
            try:
                self._env, self._env_token = acquire_env(
                    self.path, subdir=self.subdir, **self._env_options()
                )
            except lmdb.Error as exc:
                raise NotAStoreError(
                    f"'{self.path}' is not a readable LMDB store ({exc})"
                ) from None
            # Released when the reader is closed or garbage-collected, whichever is first.
            self._release = weakref.finalize(self, release_env, self._env_token)
        elif not env_is_current(self._env, self._env_token):
            raise CorruptStoreError(
                f"store '{self.path}' was replaced after this reader opened it; open it again"
            )
        return self._env

    def _open_handle(self) -> lmdb.Environment:
        return self.handle

    def close(self) -> None:
        # docstring inherited
        if self._release is not None and self._env_token[2] == os.getpid():
            self._release()
        self._env = self._env_token = self._release = None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_env=None, _env_token=None, _release=None)
        return state

    def _damaged(self, exc: lmdb.Error) -> CorruptStoreError:
        return CorruptStoreError(
            f"LMDB store '{self.path}' is damaged ({exc}); re-create it with seqstore convert"
        )


def _index_key(i: int) -> bytes:
    return i.to_bytes(8, "big")


def _encode(record: Record) -> bytes:
    key = encode_key(record.key)
    header = _HEADER.pack(record.label, record.width, record.height, record.checksum, len(key))
    return b"".join((header, key, record.data))


def _decode(value: memoryview | bytes) -> Record:
    label, width, height, crc, key_len = _HEADER.unpack_from(value)
    key_end = _HEADER.size + key_len
    key = bytes(value[_HEADER.size : key_end]).decode("utf-8", "surrogateescape")
    return Record(key, label, bytes(value[key_end:]), width, height, crc)


def _index_digest(labels: bytes, checksums: bytes) -> str:
    return hashlib.sha256(labels + checksums).hexdigest()


class LMDBReader(SharedEnvReader):
    """Reader of a seqstore LMDB store.

    Parameters
    ----------
    path
        The store directory.
    readahead
        Let the OS read ahead of the cursor. Good for the sequential block reads seqstore
        does; turn off only for random access to a store much larger than RAM.
    """

    layout_versions: ClassVar[tuple[int, ...]] = (2,)

    def __init__(self, path: str | os.PathLike[str], *, readahead: bool = True) -> None:
        super().__init__(path)
        self.readahead = readahead
        self._manifest = read_store_manifest(self.path)
        self._check_files()

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    def _env_options(self) -> dict[str, Any]:
        return {"readahead": self.readahead, "max_readers": 1024}

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        if start == stop:
            return []
        out: list[Record] = []
        try:
            with self.handle.begin(buffers=True) as txn:
                cursor = txn.cursor()
                if not cursor.set_key(_index_key(start)):
                    raise CorruptStoreError(
                        f"record {start} is missing from LMDB store '{self.path}'; "
                        "re-create it with seqstore convert"
                    )
                for value in cursor.iternext(keys=False, values=True):
                    out.append(_decode(value))
                    if len(out) == stop - start:
                        break
        except lmdb.Error as exc:
            raise self._damaged(exc) from None
        if len(out) != stop - start:
            raise CorruptStoreError(
                f"LMDB store '{self.path}' ends before record {start + len(out)}"
            )
        return out

    def _index(self) -> tuple[bytes, bytes]:
        try:
            with self.handle.begin() as txn:
                labels, checksums = txn.get(_LABELS_KEY), txn.get(_CHECKSUMS_KEY)
        except lmdb.Error as exc:
            raise self._damaged(exc) from None
        if labels is None or checksums is None:
            raise CorruptStoreError(
                f"LMDB store '{self.path}' lacks its index; re-create it with seqstore convert"
            )
        return labels, checksums

    def _checked_index(self) -> tuple[bytes, bytes]:
        labels, checksums = self._index()
        n = self.manifest.num_records
        if len(labels) != 4 * n or _index_digest(labels, checksums) != self.manifest.index_digest:
            raise CorruptStoreError(
                f"the index of LMDB store '{self.path}' does not match its manifest (damaged "
                "or edited); re-create the store with seqstore convert"
            )
        return labels, checksums

    def check_index(self) -> None:
        # docstring inherited
        self._checked_index()

    def labels(self) -> np.ndarray:
        # docstring inherited
        return np.frombuffer(self._checked_index()[0], np.int32).astype(np.int64)


class LMDBWriter(Writer):
    """Writer of a seqstore LMDB store.

    Records are committed in batches; when a batch does not fit in the map, the map is
    doubled and the batch retried, so no size has to be guessed up front. Each commit is a
    point a killed conversion can resume from (:meth:`~seqstore.backends.base.Writer.checkpoint`).

    Parameters
    ----------
    path, classes, overwrite, provenance, resume
        See :class:`~seqstore.backends.base.Writer`.
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
            map_size=_INITIAL_MAP_SIZE,
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
            max(_INITIAL_MAP_SIZE, (self.directory / DATA_FILE).stat().st_size * 2)
        )
        n = self.num_records
        try:
            with self._env.begin(write=True) as txn:
                cursor = txn.cursor()
                if cursor.set_range(_index_key(n)):  # records past the checkpoint: cut them
                    while cursor.delete():
                        pass
                for value in txn.cursor().iternext(keys=False, values=True):
                    if len(self._labels) == n:
                        break
                    label, _w, _h, crc, _k = _HEADER.unpack_from(value)
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
        value = _encode(record)
        self._batch.append((_index_key(self.num_records), value))
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
        self._put([(_LABELS_KEY, self._index[0]), (_CHECKSUMS_KEY, self._index[1])], append=False)
        self._env.sync(True)
        self._env.close()
        lock = self.directory / "lock.mdb"
        if lock.exists():
            lock.unlink()

    def _index_digest(self) -> str | None:
        return _index_digest(*self._index)

    def _abort(self) -> None:
        if hasattr(self, "_env"):  # _open may have failed before making it
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

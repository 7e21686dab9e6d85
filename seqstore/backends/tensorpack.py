"""Read LMDB files written by tensorpack's ``LMDBSerializer`` (the sequential ImageNet loaders).

Such a file is a single LMDB environment (``subdir=False``) whose entries are

* ``00000000``, ``00000001``, ...: one serialised datapoint ``[jpeg_uint8_array, label]``
  (older tensorpack wrote the keys unpadded: ``0``, ``1``, ...);
* ``__keys__``: the serialised list of those keys, in dataset order.

Datapoints were serialised with msgpack + msgpack-numpy (tensorpack up to 0.9 and
``TENSORPACK_SERIALIZE=msgpack``) or pickle (the default since 0.10). Both are read here
without importing tensorpack. Pickled entries go through an unpickler that accepts only
numpy arrays and scalars, so a crafted file cannot run code. Files written with tensorpack's
pyarrow serializer cannot be read: pyarrow removed that format.

A file on this machine is read through an LMDB environment; a file in object storage through
LMDB's page parser (:mod:`seqstore.backends.lmdb.pages`), with ranged GETs of the values.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, ClassVar

import lmdb
import numpy as np

from .._version import __version__
from ..errors import BackendNotFoundError, CorruptStoreError, NotAStoreError, SeqstoreError
from ..io.per_process import ProcessLocal
from ..io.places import Place
from ..io.ranges import Source
from ..manifest import Manifest, Provenance
from ..records import Record
from .base import Backend
from .folder import load_classes
from .in_place import probed
from .lmdb.env import SharedEnvReader
from .lmdb.pages import PageTree
from .lmdb.reader import read_values

__all__ = ["TensorpackBackend", "TensorpackReader", "loads_datapoint"]

_KEYS_KEY = b"__keys__"
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _msgpack_numpy_hook(obj: dict[Any, Any]) -> Any:
    # msgpack-numpy's encoding: {b"nd": bool, b"type": dtype str, b"shape": ..., b"data": bytes}
    if b"nd" in obj:
        dtype = obj[b"type"]
        dtype = np.dtype(dtype if isinstance(dtype, str) else dtype.decode())
        if obj[b"nd"]:
            return np.frombuffer(obj[b"data"], dtype).reshape(obj[b"shape"])
        return np.frombuffer(obj[b"data"], dtype)[0]
    return obj


def loads_datapoint(value: bytes, where: str = "a tensorpack datapoint") -> Any:
    """Deserialise one tensorpack datapoint (msgpack or pickle, told apart by their first byte).

    Raises
    ------
    SeqstoreError
        ``value`` is neither (``where`` names it in the message).
    """
    if value[:1] == b"\x80":
        try:
            return _NumpyOnlyUnpickler(io.BytesIO(value)).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise SeqstoreError(f"{where} is an unreadable pickle ({exc})") from None
    try:
        import msgpack
    except ImportError:
        raise BackendNotFoundError(
            "this tensorpack LMDB file is msgpack-encoded and needs the package 'msgpack'; "
            "run: pip install 'seqstore[tensorpack]'"
        ) from None
    try:
        return msgpack.unpackb(
            value,
            raw=False,
            object_hook=_msgpack_numpy_hook,
            max_bin_len=1 << 31,
            max_array_len=1 << 31,
            max_map_len=1 << 31,
            max_str_len=1 << 31,
        )
    except (ValueError, msgpack.UnpackException) as exc:
        raise SeqstoreError(
            f"{where} is neither msgpack nor a pickle of protocol 2 or later "
            f"({type(exc).__name__}); seqstore reads files of tensorpack's LMDBSerializer"
        ) from None


def _image_and_label(dp: Any, where: str) -> tuple[bytes, int]:
    if not isinstance(dp, (list, tuple)) or len(dp) < 2:
        raise SeqstoreError(
            f"{where} is not an [image, label] datapoint (got {type(dp).__name__}); "
            "seqstore reads tensorpack files of encoded images with integer labels"
        )
    image, label = dp[0], dp[1]
    if isinstance(image, np.ndarray):
        image = image.tobytes()
    if not isinstance(image, (bytes, bytearray)):
        raise SeqstoreError(f"{where} holds a {type(image).__name__}, not encoded image bytes")
    return bytes(image), int(label)


class TensorpackReader(SharedEnvReader):
    """Reader of an LMDB file written by tensorpack's ``LMDBSerializer``.

    Parameters
    ----------
    location
        The ``.lmdb`` file, or its :class:`~seqstore.io.places.Place` (in object storage).
    classes
        Class names for the integer labels (a list, a file with one per line, or an ImageFolder
        root such as the ImageNet train folder). tensorpack files do not record them.

    Notes
    -----
    tensorpack stores no checksums: a record's checksum is computed as it is read, and
    ``verify`` reports that nothing could be checked.
    """

    subdir: ClassVar[bool] = False
    stores_checksums: ClassVar[bool] = False

    def __init__(
        self,
        location: str | os.PathLike[str] | Place,
        *,
        classes: str | os.PathLike[str] | list[str] | None = None,
    ) -> None:
        super().__init__(location)
        where = self.place.where
        local = self.place.local
        if local is not None and not local.is_file():
            raise NotAStoreError(f"'{where}' is not a tensorpack LMDB file")
        try:
            self.data: Source = self.place.source()
        except FileNotFoundError:
            raise NotAStoreError(f"'{where}' does not exist") from None
        self._tree: ProcessLocal[PageTree] = ProcessLocal()
        # In object storage, and where another handle in this process holds the file open
        # (tensorpack's own DataFlow, beside seqstore while a user switches over: LMDB
        # refuses a second environment of one file in a process), its pages are parsed.
        self._pages = local is None
        raw_keys = None
        if local is not None:
            try:
                with self.env.begin() as txn:
                    raw_keys = txn.get(_KEYS_KEY)
            except NotAStoreError as exc:
                if "already open in this process" not in str(exc):
                    raise
                self._pages = True
        if self._pages:
            raw_keys = self.tree.get(_KEYS_KEY, self.data)
        if raw_keys is None:
            raise NotAStoreError(f"'{where}' is an LMDB file without tensorpack's __keys__ entry")
        keys = loads_datapoint(raw_keys, f"the __keys__ entry of '{where}'")
        self._keys: list[bytes] = [bytes(k) for k in keys]
        n = len(self._keys)
        # LMDBSerializer's zero-padded keys sort in dataset order: a cursor reads sequentially.
        self._cursor_order = n > 0 and all(
            self._keys[i] == f"{i:08d}".encode() for i in (0, n // 2, n - 1)
        )
        self._manifest = Manifest(
            format="tensorpack",
            format_version=1,
            num_records=n,
            total_bytes=self.data.size,
            classes=load_classes(classes) if classes is not None else [],
            provenance=Provenance(seqstore_version=__version__, source=where),
        )

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    def _env_options(self) -> dict[str, Any]:
        return {"readahead": True}

    @property
    def tree(self) -> PageTree:
        """This process's page parser of the file (in object storage, or held open by
        another handle in this process)."""
        return self._tree.get(lambda: PageTree.of(self.data, "convert it again from its source"))

    def close(self) -> None:
        # docstring inherited
        super().close()
        self._tree.close()
        self.data.close()

    def _values(self, start: int, stop: int) -> list[bytes | memoryview | None]:
        """The raw values of entries ``start`` to ``stop - 1``."""
        if self._pages:
            keys = self._keys[start:stop]
            found = self.tree.values(keys) if keys else []
            if found is None:  # one key at a time, to name the one that is missing
                return [self.tree.get(key, self.data) for key in keys]
            return list(read_values(self.data, found))
        try:
            with self.env.begin() as txn:
                if self._cursor_order and stop > start:
                    cursor = txn.cursor()
                    cursor.set_key(self._keys[start])
                    items = cursor.iternext(keys=True, values=True)
                    values: list[bytes | None] = [
                        v for _, (_k, v) in zip(range(stop - start), items, strict=False)
                    ]
                else:
                    values = [txn.get(k) for k in self._keys[start:stop]]
        except lmdb.Error as exc:
            raise self._damaged(exc) from None
        return list(values)

    def read_raw_block(self, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        self._check_range(start, stop)
        out: list[tuple[str, int, bytes]] = []
        where = self.place.where
        for i, value in zip(range(start, stop), self._values(start, stop), strict=True):
            key = self._keys[i].decode()
            if value is None:
                raise CorruptStoreError(f"tensorpack file '{where}' lists key {key} but lacks it")
            entry = f"entry {key} of '{where}'"
            data, label = _image_and_label(loads_datapoint(bytes(value), entry), entry)
            out.append((key, label, data))
        return out

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        return probed(self.read_raw_block(start, stop), self.place.where)


class TensorpackBackend(Backend):
    """LMDB files of tensorpack's LMDBSerializer, as the sequential ImageNet loaders wrote them."""

    name: ClassVar[str] = "tensorpack"
    description: ClassVar[str] = "tensorpack LMDBSerializer file (read only)"
    reader_cls = TensorpackReader

    @classmethod
    def sniff(cls, place: Place) -> bool:
        # docstring inherited
        local = place.local
        if local is not None and not local.is_file():
            return False
        try:
            source = place.source()
        except (FileNotFoundError, IsADirectoryError):
            return False
        try:
            return PageTree.of(source, "").get(_KEYS_KEY, source) is not None
        except (CorruptStoreError, OSError):
            return False
        finally:
            source.close()

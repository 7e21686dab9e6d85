"""Compressed shards unpacked whole, and the hashes of shard files (see
:mod:`seqstore.backends.offset_shards`)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ...errors import BackendNotFoundError, ConfigError, CorruptStoreError
from ...io.cache import ShardCache, cache_key
from ...io.ranges import Source
from .layout import Shard

__all__ = ["check_hashes", "file_pieces", "hasher", "unpack"]


def _decompressor(algo: str, where: str) -> Callable[[bytes], bytes]:
    """The function that decompresses a whole file of ``algo``, or one line naming the
    package to install."""
    family = algo.split(":", 1)[0]
    if family == "gz":
        return gzip.decompress
    if family == "bz2":
        return bz2.decompress
    packages = {
        "zstd": ("zstandard", "zstandard"),
        "br": ("brotli", "brotli"),
        "snappy": ("snappy", "python-snappy"),
    }
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
        return lambda data: bytes(lib.ZstdDecompressor().decompressobj().decompress(data))
    return lib.decompress


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


def file_pieces(source: Source, step: int = 8 << 20) -> Iterator[bytes | bytearray | memoryview]:
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
        check_hashes(source.name, shard.hashes, [data], remedy)
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


def check_hashes(
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

"""Where each member of a tar shard lies: one sequential pass over its headers, kept on disk.

A tar file has no table of contents: its members follow each other, each behind a 512-byte
header. :func:`scan_tar` reads the headers in one pass (the standard library's ``tarfile``,
which knows the ustar, GNU and pax forms, over the shard's byte source in 4 MB reads) and
keeps each regular member's name, data offset and size, and the bytes of the small members
that are not images (a ``cls`` label, a ``json`` record). :func:`shard_index` keeps that
table in a cache directory under a name made of the shard's name and identity (device,
inode, size and modification time on a disk; ETag and size in object storage), so a shard
changed or replaced is scanned again, and an unchanged one never is.

A member's name is only ever split into a key and an extension; it is never used as a path.
"""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import CorruptStoreError
from ...io.fileobj import SourceFile
from ...io.ranges import Source
from ..index_cache import index_path

__all__ = ["IMAGE_EXTENSIONS", "SMALL_MEMBER", "TarIndex", "shard_index"]

#: Member extensions that hold an encoded image.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
#: Members up to this size that are not images are kept in the index (labels, metadata).
SMALL_MEMBER = 4096
_VERSION = 1


@dataclass
class TarIndex:
    """The regular members of one tar shard, in file order.

    Attributes
    ----------
    names : list of str
        Member names (UTF-8; other bytes kept as surrogates).
    offsets, sizes : int64 arrays
        Where each member's data starts in the shard, and its length.
    small : dict of int to bytes
        The data of small members that are not images, by member number.
    """

    names: list[str]
    offsets: np.ndarray
    sizes: np.ndarray
    small: dict[int, bytes]

    def save(self, path: Path, identity: str) -> None:
        """Write the index to ``path`` atomically (a rename), tagged with ``identity``."""
        blob = "\n".join(self.names).encode("utf-8", "surrogateescape")
        keys = np.array(sorted(self.small), np.int64)
        smalls = b"".join(self.small[int(k)] for k in keys)
        lengths = np.array([len(self.small[int(k)]) for k in keys], np.int64)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(
                f,
                version=np.array([_VERSION]),
                identity=np.frombuffer(identity.encode("utf-8", "surrogateescape"), np.uint8),
                names=np.frombuffer(blob, np.uint8),
                offsets=self.offsets,
                sizes=self.sizes,
                small_keys=keys,
                small_lengths=lengths,
                small=np.frombuffer(smalls, np.uint8),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, identity: str) -> TarIndex | None:
        """The index saved at ``path`` for a shard of ``identity``; None if there is none,
        or it was made for another version of the shard, or it does not read."""
        try:
            with np.load(path) as z:
                if int(z["version"][0]) != _VERSION or z["identity"].tobytes() != identity.encode(
                    "utf-8", "surrogateescape"
                ):
                    return None
                blob = z["names"].tobytes().decode("utf-8", "surrogateescape")
                names = blob.split("\n") if blob else []
                keys, lengths, smalls = z["small_keys"], z["small_lengths"], z["small"].tobytes()
                ends = np.cumsum(lengths)
                small = {
                    int(k): smalls[int(e - n) : int(e)]
                    for k, n, e in zip(keys, lengths, ends, strict=True)
                }
                return cls(names, z["offsets"], z["sizes"], small)
        except (OSError, ValueError, KeyError, UnicodeDecodeError):
            return None


def _extension(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return base.split(".", 1)[1].lower() if "." in base else ""


def scan_tar(source: Source, remedy: str) -> TarIndex:
    """The member table of the tar shard ``source``, in one pass over its headers.

    Raises
    ------
    CorruptStoreError
        The shard is not a tar file, or is cut short (a member runs past its end).
    """
    file = SourceFile(source, page_size=4 << 20, cache_bytes=8 << 20)
    names: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    small: dict[int, bytes] = {}
    try:
        with tarfile.open(
            fileobj=file, mode="r:", encoding="utf-8", errors="surrogateescape"
        ) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.offset_data + member.size > source.size:
                    raise CorruptStoreError(
                        f"tar shard '{source.name}' is cut short: member '{member.name}' runs "
                        f"past its end ({source.size} bytes); {remedy}"
                    )
                if member.size <= SMALL_MEMBER and _extension(member.name) not in IMAGE_EXTENSIONS:
                    data = tar.extractfile(member)
                    small[len(names)] = data.read() if data is not None else b""
                names.append(member.name)
                offsets.append(member.offset_data)
                sizes.append(member.size)
    except (tarfile.TarError, EOFError) as exc:
        if file.failure is not None:
            raise file.failure from None
        raise CorruptStoreError(
            f"tar shard '{source.name}' is damaged or cut short ({exc}); {remedy}"
        ) from None
    return TarIndex(names, np.array(offsets, np.int64), np.array(sizes, np.int64), small)


def shard_index(source: Source, index_dir: Path, remedy: str) -> TarIndex:
    """The member table of the shard ``source``: from ``index_dir`` where it was kept for
    this version of the shard, else scanned (and kept there, when the directory can be
    written)."""
    path, identity = index_path(source, index_dir, "tar members")
    found = TarIndex.load(path, identity)
    if found is not None:
        return found
    index = scan_tar(source, remedy)
    try:
        index_dir.mkdir(parents=True, exist_ok=True)
        index.save(path, identity)
    except OSError:  # a read-only cache: scanned again next time
        pass
    return index

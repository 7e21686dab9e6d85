"""Writing WebDataset shards that ``webdataset.WebDataset`` (and seqstore) read.

Sample ``i`` of the store is ``{i:09d}.{ext}`` (the image, its extension from its bytes:
``jpg``, ``png`` or ``webp``) and ``{i:09d}.cls`` (its label, in decimal; none for a record
without a label). A new shard, ``shard-NNNNNN.tar``, begins once the last one holds
``shard_bytes`` of images (``convert --shard-mb``). The store's manifest sits beside the
shards, which WebDataset never reads.
"""

from __future__ import annotations

import io
import os
import tarfile

from ...errors import ConfigError
from ...records import Record
from ..writer import ShardFilesWriter, ensure_space

__all__ = ["WebDatasetWriter", "image_extension"]

_MAGIC = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))


def image_extension(data: bytes) -> str | None:
    """The WebDataset extension of an encoded image (``jpg``, ``png``, ``webp``); None for
    another format."""
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class WebDatasetWriter(ShardFilesWriter):
    """Writer of WebDataset shards (see the module docstring).

    Parameters
    ----------
    path, classes, overwrite, provenance, shard_bytes
        See :class:`~seqstore.backends.writer.ShardFilesWriter`.
    """

    format = "webdataset"
    format_version = 1

    def _open(self) -> None:
        self._tar: tarfile.TarFile | None = None
        self._names: list[str] = []

    def _next_shard(self) -> tarfile.TarFile:
        if self._tar is not None:
            self._tar.close()
        name = f"shard-{len(self._names):06d}.tar"
        self._names.append(name)
        self._tar = tarfile.open(self.directory / name, "w", format=tarfile.USTAR_FORMAT)
        return self._tar

    def _member(self, tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o444
        tar.addfile(info, io.BytesIO(data))

    def _write(self, record: Record) -> None:
        ext = image_extension(record.data)
        if ext is None:
            raise ConfigError(
                f"record '{record.key}' is not a JPEG, PNG or WebP image, the images WebDataset "
                "shards hold here; convert the source to lmdb or hdf5, which keep any image"
            )
        tar = self._tar
        if self.starts_new_file(len(record.data), tar is not None) or tar is None:
            tar = self._next_shard()
        ensure_space(self.directory, len(record.data) + 2048)
        key = f"{self.num_records:09d}"
        self._member(tar, f"{key}.{ext}", record.data)
        if record.label >= 0:
            self._member(tar, f"{key}.cls", str(record.label).encode())

    def _finish(self) -> None:
        if self._tar is None:  # no records: one empty shard, which readers read as such
            self._next_shard()
        assert self._tar is not None
        self._tar.close()
        for name in self._names:
            with open(self.directory / name, "rb") as f:
                os.fsync(f.fileno())
        self.data_files = tuple(self._names)  # type: ignore[misc]

    def _abort(self) -> None:
        if getattr(self, "_tar", None) is not None:
            self._tar.close()  # type: ignore[union-attr]

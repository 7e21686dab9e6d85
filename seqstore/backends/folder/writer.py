"""Writing records out as an image folder with a manifest."""

from __future__ import annotations

import os
from pathlib import Path

from ...errors import ConfigError
from ...records import Record
from ..base import Writer
from .tree import IMG_EXTENSIONS

__all__ = ["FolderWriter"]


class FolderWriter(Writer):
    """Exports records as an ImageFolder tree: ``<class>/<file>``.

    A record whose key starts with its class folder keeps the rest of its key as path;
    any other key (a flat validation file, say) is placed inside its class folder.

    Parameters
    ----------
    path, classes, overwrite, provenance
        See :class:`~seqstore.backends.writer.Writer`. Without class names, class folders are
        named by zero-padded label (``00000``, ``00001``, ...), which sort in label order.
    """

    format = "folder"
    format_version = 1

    def _open(self) -> None:
        self._dirs: dict[int, str] = {}
        for label, name in enumerate(self.classes):
            self._class_dir(label, name)
        self._written: set[str] = set()

    def _class_dir(self, label: int, name: str | None = None) -> str:
        if label not in self._dirs:
            name = name if name is not None else f"{label:05d}"
            if not name or name in (".", "..") or "/" in name or os.sep in name:
                raise ConfigError(f"class name {name!r} cannot be a folder name")
            (self.directory / name).mkdir(exist_ok=True)
            self._dirs[label] = name
        return self._dirs[label]

    def _write(self, record: Record) -> None:
        if record.label < 0:
            raise ConfigError(f"record '{record.key}' has no label; a folder store needs one")
        class_dir = self._class_dir(record.label)
        key = record.key
        rel = key[len(class_dir) + 1 :] if key.startswith(class_dir + "/") else key
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise ConfigError(f"record key '{key}' is not a relative path; cannot export it")
        if not rel.lower().endswith(IMG_EXTENSIONS):
            raise ConfigError(
                f"record key '{key}' has no image extension; an image folder would not list it"
            )
        if "\x00" in key:
            raise ConfigError(
                f"record key {key!r} holds a NUL byte, which no file name can; export to "
                "lmdb or hdf5, which keep any key, or rename the record"
            )
        out = f"{class_dir}/{rel}"
        if out in self._written:
            raise ConfigError(f"two records would both be written to '{self.path / out}'")
        self._written.add(out)
        # A key read from a file name that is not UTF-8 holds surrogate escapes
        # (os.fsdecode); os.fsencode turns it back into the very bytes of that name.
        target = os.fsencode(self.directory / out)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as f:
            f.write(record.data)

    def _finish(self) -> None:
        if not self.classes:
            count = max(self._dirs, default=-1) + 1
            self.classes = [self._class_dir(i) for i in range(count)]
        # One sync for all files: fsync per file would cost a disk flush per image.
        os.sync()

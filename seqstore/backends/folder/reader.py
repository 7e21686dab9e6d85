"""Reading an image folder in place (the layouts: :mod:`seqstore.backends.folder`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..._version import __version__
from ...errors import BadImageError, ConfigError, NotAStoreError
from ...imaging.header import probe
from ...io.places import Place
from ...manifest import Manifest, Provenance, is_store, read_manifest
from ...records import Record
from ..base import Reader
from ..staging import read_store_manifest
from .tree import (
    IMG_EXTENSIONS,
    file_size,
    find_classes,
    find_splits,
    load_classes,
    parse_label_file,
    scan_tree,
    split_of,
    why_unreadable,
)

__all__ = ["FolderReader"]

_SIZE_SAMPLE = 2048


class FolderReader(Reader):
    """Reader of an image folder, read in place.

    Parameters
    ----------
    path
        An ImageFolder root, or a flat folder of images when ``labels`` is given.
    labels
        Label file of a flat validation folder (``<file> <label>`` per line).
    classes
        Class names (a list, a file with one per line, or the training split's ImageFolder
        root) that labels map onto. Default: the tree's sub-folders, or for a label file its
        sorted class names.
    split
        The split to read of a dataset root (``train``, ``val`` ...: ``path / split``). A
        root of splits opened without it is refused with one line naming them, rather than
        read as an image folder whose classes are the splits.

    Attributes
    ----------
    ignored : list of str
        Files inside class folders without an image extension (for example Tiny-ImageNet's
        ``<wnid>_boxes.txt``); they are not records.

    Notes
    -----
    Image files carry no checksums: a record's checksum is computed as it is read, and
    ``verify`` reports that nothing could be checked.
    """

    stores_checksums: ClassVar[bool] = False
    class_sorted: ClassVar[bool] = True
    records_are_files: ClassVar[bool] = True
    labels_apart = True

    def __init__(
        self,
        path: str | os.PathLike[str] | Place,
        *,
        labels: str | os.PathLike[str] | None = None,
        classes: str | os.PathLike[str] | Sequence[str] | None = None,
        split: str | None = None,
    ) -> None:
        if split is not None:
            local = path.local if isinstance(path, Place) else Path(os.fspath(path))
            if local is None:
                raise ConfigError("split= applies to a folder on a local disk")
            path = split_of(local, split)
        super().__init__(path)
        root = self.path
        if not root.is_dir():
            if not root.exists():
                read_store_manifest(root)  # names a folder store whose writer was killed
            raise NotAStoreError(f"image folder '{root}' does not exist or is not a folder")
        if split is None and labels is None and classes is None and not is_store(root):
            splits = find_splits(root)
            if splits:
                raise ConfigError(
                    f"'{root}' is a dataset root holding the splits {', '.join(splits)}, not an "
                    f"image folder of the classes {', '.join(repr(s) for s in splits)}: open one "
                    f"split ('{root / splits[0]}'), or choose it with split='{splits[0]}' "
                    f"(seqstore.open and Loader; --reader-option split={splits[0]} in convert)"
                )
        class_names = load_classes(classes) if classes is not None else None
        stored = read_manifest(root) if is_store(root) else None
        self.ignored: list[str] = []
        if labels is not None:
            mapping, class_names = parse_label_file(Path(labels), class_names)
            self._keys = sorted(
                e.name
                for e in os.scandir(root)
                if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS)
            )
            missing = [k for k in self._keys if k not in mapping]
            if missing:
                raise ConfigError(
                    f"label file '{labels}' has no label for '{root / missing[0]}' "
                    f"({len(missing)} images unlabelled); add them or remove the images"
                )
            absent = sorted(set(mapping) - set(self._keys))
            if absent:
                raise ConfigError(
                    f"label file '{labels}' lists '{absent[0]}', which is not in '{root}' "
                    f"({len(absent)} listed images missing)"
                )
            self._labels = [mapping[k] for k in self._keys]
        else:
            if class_names is None:
                class_names = stored.classes if stored is not None else find_classes(root)
            if not class_names:
                raise NotAStoreError(
                    f"'{root}' has no class sub-folders; an image folder needs one folder per "
                    "class, or pass a label file for a flat folder"
                )
            self._keys, self._labels, self.ignored = scan_tree(
                root, class_names, allow_empty=stored is not None
            )
        self._classes = class_names
        if not self._keys and stored is None:
            raise NotAStoreError(f"image folder '{root}' holds no images")
        self._manifest = self._make_manifest(stored, labels)

    def _make_manifest(self, stored: Manifest | None, labels: object) -> Manifest:
        n = len(self._keys)
        step = max(1, n // _SIZE_SAMPLE)
        sample = self._keys[::step]
        sampled = sum(file_size(self.path / k) for k in sample)
        total = sampled if step == 1 else round(sampled / len(sample) * n)
        provenance = (
            stored.provenance
            if stored is not None
            else Provenance(
                seqstore_version=__version__,
                source=str(self.path),
                options={"labels": str(labels)} if labels is not None else {},
            )
        )
        return Manifest(
            format="folder",
            format_version=1,
            num_records=n,
            total_bytes=total,
            classes=self._classes,
            provenance=provenance,
        )

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def keys(self) -> list[str]:
        """Every record's key (path relative to the folder), in record order."""
        return list(self._keys)

    @property
    def source_files(self) -> list[Path] | None:
        # docstring inherited
        return [self.path / key for key in self._keys]

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        out = []
        for key, label, data in self.read_raw_block(start, stop):
            try:
                info = probe(data, str(self.path / key))
            except BadImageError:
                # A damaged file is one bad record, not a failed block: its size is unknown
                # (0 x 0), and decoding it fails as the Loader decodes it, where on_error
                # decides (convert checks each file itself, from read_raw_block).
                out.append(Record.make(key, label, data, 0, 0))
                continue
            out.append(Record.make(key, label, data, info.width, info.height))
        return out

    def read_raw_block(self, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        self._check_range(start, stop)
        root = str(self.path)
        out = []
        for key, label in zip(self._keys[start:stop], self._labels[start:stop], strict=True):
            path = os.path.join(root, key)
            try:
                with open(path, "rb") as f:
                    out.append((key, label, f.read()))
            except OSError as exc:
                raise BadImageError(
                    f"cannot read image '{path}' ({why_unreadable(path, exc)}); fix or remove "
                    "it, or pass on_error='skip' to leave it out"
                ) from None
        return out

    def labels(self) -> np.ndarray:
        # docstring inherited
        return np.asarray(self._labels, np.int64)

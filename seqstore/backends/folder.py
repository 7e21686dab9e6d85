"""Image folders read in place, with torchvision's ImageFolder rules, and written by export.

Two layouts are read:

* An ImageFolder tree: ``root/<class>/**/<image>``. Classes are the sorted names of the
  sub-directories of ``root`` (hidden ones included, as torchvision does); within each
  class, files are found by ``sorted(os.walk(..., followlinks=True))`` with sorted file
  names, and kept when their lower-cased name ends in one of torchvision's
  ``IMG_EXTENSIONS``. Class indices and sample order are therefore torchvision's.
* A validation layout as ILSVRC2012 and Tiny-ImageNet ship it: one flat folder of images
  plus a label file with one ``<file><whitespace><label>`` line per image, where the label
  is a class name (``val_0.JPEG<TAB>n01443537<TAB>...``) or a class index
  (``ILSVRC2012_val_00000001.JPEG 65``). Records are in sorted file-name order; labels are
  mapped onto the training split's classes when those are given.

A folder written by :class:`FolderWriter` is an ImageFolder tree plus a manifest, with one
directory per class (also for classes that received no image), so class indices survive
the round trip. Records read back in sorted order, not write order.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from .._version import __version__
from ..errors import BadImageError, ConfigError, NotAStoreError
from ..imaging.header import probe
from ..manifest import MANIFEST_NAME, Manifest, Provenance, is_store, read_manifest
from ..records import Record
from .base import Backend, Reader, Writer
from .staging import read_store_manifest

__all__ = ["IMG_EXTENSIONS", "FolderBackend", "FolderReader", "FolderWriter", "find_classes"]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Sizes are stat'ed for at most this many files; beyond it the total is estimated.
_SIZE_SAMPLE = 2048


def find_classes(root: Path) -> list[str]:
    """Class names of an ImageFolder tree: its sub-directories, sorted (torchvision's rule)."""
    try:
        return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as exc:
        raise NotAStoreError(f"cannot list image folder '{root}': {exc.strerror}") from None


def _scan_tree(
    root: Path, classes: list[str], allow_empty: bool
) -> tuple[list[str], list[int], list[str]]:
    keys: list[str] = []
    labels: list[int] = []
    ignored: list[str] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            empty.append(name)
            continue
        found = 0
        for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            for fname in sorted(fnames):
                key = f"{rel_dir}/{fname}"
                if fname.lower().endswith(IMG_EXTENSIONS):
                    keys.append(key)
                    labels.append(label)
                    found += 1
                else:
                    ignored.append(key)
        if found == 0:
            empty.append(name)
    if empty and not allow_empty:
        raise NotAStoreError(
            f"image folder '{root}' has no images in class folder(s) {', '.join(empty[:5])}"
            f"{' ...' if len(empty) > 5 else ''}; supported extensions: {', '.join(IMG_EXTENSIONS)}"
        )
    return keys, labels, ignored


def _size(path: Path) -> int:
    """A file's size for the store's estimate; 0 for one that cannot be read (see below)."""
    try:
        return os.stat(path).st_size
    except OSError:  # reported, with its reason, when the file is read
        return 0


def _why_unreadable(path: str, exc: OSError) -> str:
    if os.path.islink(path) and exc.errno == errno.ENOENT:
        return f"a dangling symbolic link to '{os.readlink(path)}'"
    if exc.errno == errno.ELOOP:
        return "a symbolic link that loops"
    return exc.strerror or str(exc)


def _parse_label_file(
    label_file: Path, classes: list[str] | None
) -> tuple[dict[str, int], list[str]]:
    """Map file name -> label index, and the class names used."""
    try:
        lines = label_file.read_text().splitlines()
    except OSError as exc:
        raise NotAStoreError(f"cannot read label file '{label_file}': {exc.strerror}") from None
    pairs: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise ConfigError(
                f"label file '{label_file}' line {lineno} has no label: {line.strip()!r}; "
                "expected '<file> <label>'"
            )
        pairs.append((fields[0], fields[1]))
    numeric = all(label.isdigit() for _, label in pairs)
    if classes is None:
        if numeric:
            count = max((int(label) for _, label in pairs), default=-1) + 1
            classes = [str(i) for i in range(count)]
        else:
            classes = sorted({label for _, label in pairs})
    index = {name: i for i, name in enumerate(classes)}
    mapping: dict[str, int] = {}
    for fname, label in pairs:
        if numeric:
            value = int(label)
            if value >= len(classes):
                raise ConfigError(
                    f"label file '{label_file}' gives '{fname}' label {value}, but there are "
                    f"only {len(classes)} classes"
                )
        else:
            if label not in index:
                raise ConfigError(
                    f"label file '{label_file}' gives '{fname}' the class '{label}', which is "
                    "not among the training classes; check the --classes folder"
                )
            value = index[label]
        mapping[fname] = value
    return mapping, classes


def load_classes(spec: str | os.PathLike[str] | Sequence[str], *, sort: bool = True) -> list[str]:
    """Class names from a list, a text file with one name per line, or an ImageFolder root.

    Parameters
    ----------
    spec
        A list of names (kept in its order), a file, or an ImageFolder root.
    sort
        Sort a file's names, as an ImageFolder's class folders are sorted (torchvision's
        order): a split labelled through the file (a validation folder, say) then agrees
        with a training split read from its folder. False keeps the file's order.

    Returns
    -------
    list of str
    """
    if isinstance(spec, (str, os.PathLike)):
        p = Path(spec)
        if p.is_dir():
            return find_classes(p)
        if p.is_file():
            names = [line.split()[0] for line in p.read_text().splitlines() if line.strip()]
            if len(set(names)) != len(names):
                twice = next(n for n in names if names.count(n) > 1)
                raise ConfigError(f"classes file '{p}' lists '{twice}' more than once")
            return sorted(names) if sort else names
        raise ConfigError(f"classes '{p}' is neither a folder nor a file of class names")
    return list(spec)


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
        path: str | os.PathLike[str],
        *,
        labels: str | os.PathLike[str] | None = None,
        classes: str | os.PathLike[str] | Sequence[str] | None = None,
    ) -> None:
        super().__init__(path)
        root = self.path
        if not root.is_dir():
            if not root.exists():
                read_store_manifest(root)  # names a folder store whose writer was killed
            raise NotAStoreError(f"image folder '{root}' does not exist or is not a folder")
        class_names = load_classes(classes) if classes is not None else None
        stored = read_manifest(root) if is_store(root) else None
        self.ignored: list[str] = []
        if labels is not None:
            mapping, class_names = _parse_label_file(Path(labels), class_names)
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
            self._keys, self._labels, self.ignored = _scan_tree(
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
        sampled = sum(_size(self.path / k) for k in sample)
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
            info = probe(data, str(self.path / key))
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
                    f"cannot read image '{path}' ({_why_unreadable(path, exc)}); fix or remove "
                    "it, or use --on-error skip to leave it out"
                ) from None
        return out

    def labels(self) -> np.ndarray:
        # docstring inherited
        return np.asarray(self._labels, np.int64)


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


class FolderBackend(Backend):
    """Images left as files in an ImageFolder tree or a labelled flat folder."""

    name: ClassVar[str] = "folder"
    description: ClassVar[str] = "image files in place (torchvision ImageFolder rules)"
    reader_cls = FolderReader
    writer_cls = FolderWriter
    keeps_order: ClassVar[bool] = False

    @classmethod
    def sniff(cls, path: Path) -> bool:
        # docstring inherited
        return path.is_dir() and not (path / MANIFEST_NAME).exists()

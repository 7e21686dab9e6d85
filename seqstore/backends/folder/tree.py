"""Walking an image folder as torchvision does: its classes, its files, and label files."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from ...errors import ConfigError, NotAStoreError

__all__ = [
    "SPLIT_NAMES",
    "find_splits",
    "split_of",
    "IMG_EXTENSIONS",
    "file_size",
    "find_classes",
    "load_classes",
    "parse_label_file",
    "scan_tree",
    "why_unreadable",
]

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Sizes are stat'ed for at most this many files; beyond it the total is estimated.


def find_classes(root: Path) -> list[str]:
    """Class names of an ImageFolder tree: its sub-directories, sorted (torchvision's rule)."""
    try:
        return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as exc:
        raise NotAStoreError(f"cannot list image folder '{root}': {exc.strerror}") from None


#: Folder names that a dataset's splits go by (torchvision's, TFDS's, the Hub's).
SPLIT_NAMES = frozenset({"train", "val", "valid", "validation", "test", "dev"})


def find_splits(root: Path) -> list[str]:
    """The splits of a dataset root: where every sub-folder of ``root`` is named as a split
    (``train``, ``val`` ...), there are two or more, and one holds folders of its own (its
    classes), their names, sorted; else none (an image folder of classes)."""
    try:
        subs = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError:
        return []
    if len(subs) < 2 or any(name.lower() not in SPLIT_NAMES for name in subs):
        return []
    for name in subs:
        try:
            if any(entry.is_dir() for entry in os.scandir(root / name)):
                return subs
        except OSError:
            continue
    return []


def split_of(root: Path, split: str) -> Path:
    """The folder of split ``split`` of the dataset root ``root``.

    Raises
    ------
    ConfigError
        There is no such split (one line lists the folders there are).
    """
    if not (root / split).is_dir():
        there = sorted(e.name for e in os.scandir(root) if e.is_dir()) if root.is_dir() else []
        raise ConfigError(
            f"'{root}' has no split '{split}' (its folders: {', '.join(there) or 'none'})"
        )
    return root / split


def scan_tree(
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


def file_size(path: Path) -> int:
    """A file's size for the store's estimate; 0 for one that cannot be read (see below)."""
    try:
        return os.stat(path).st_size
    except OSError:  # reported, with its reason, when the file is read
        return 0


def why_unreadable(path: str, exc: OSError) -> str:
    if os.path.islink(path) and exc.errno == errno.ENOENT:
        return f"a dangling symbolic link to '{os.readlink(path)}'"
    if exc.errno == errno.ELOOP:
        return "a symbolic link that loops"
    return exc.strerror or str(exc)


def parse_label_file(
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

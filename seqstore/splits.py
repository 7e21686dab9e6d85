"""Dataset roots: where the store or image folder of a split (train, val) lives.

The Loader's ``split`` option names a split under a root; :func:`resolve_split` finds it
in the layouts converted stores, tensorpack's files and Tiny ImageNet use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import NotAStoreError

__all__ = ["resolve_split"]


def resolve_split(
    root: str | Path, split: str, storage_options: dict[str, Any] | None = None
) -> tuple[str | Path, dict[str, Any]]:
    """Find the store or folder of ``split`` under a dataset root, and its reader options.

    See :class:`~seqstore.config.LoaderConfig` (``split``) for the layouts tried. Under a
    URL, only stores: ``<split>.h5``, ``<split>.hdf5``, ``<split>.lmdb``, ``<split>``, the
    first that holds a manifest (HDF5 first: it reads by ranged requests).

    Raises
    ------
    NotAStoreError
        None of the layouts is there.
    """
    if isinstance(root, str) and "://" in root:
        from .io.object import ObjectStore
        from .manifest import MANIFEST_NAME

        remote = ObjectStore(root, dict(storage_options or {}))
        names = [f"{split}.h5", f"{split}.hdf5", f"{split}.lmdb", split]
        for name in names:
            if remote.exists(remote.join(f"{name}/{MANIFEST_NAME}")):
                return remote.join(name), {}
        raise NotAStoreError(
            f"no '{split}' store under '{remote.url}' (looked for {', '.join(names)} with a "
            f"{MANIFEST_NAME})"
        )
    root = Path(root)
    # Converted stores first: a root often keeps the image folder beside its store.
    for candidate in (
        root / f"{split}.lmdb",
        root / f"{split}.h5",
        root / f"{split}.hdf5",
        root / f"ILSVRC-{split}.lmdb",
        root / split,
    ):
        if not candidate.exists():
            continue
        labels = candidate / "val_annotations.txt"
        if candidate.is_dir() and (candidate / "images").is_dir() and labels.is_file():
            options: dict[str, Any] = {"labels": labels}
            if (root / "train").is_dir():
                options["classes"] = root / "train"
            return candidate / "images", options
        return candidate, {}
    raise NotAStoreError(
        f"no '{split}' split under '{root}' (looked for {split}.lmdb, {split}.h5, "
        f"{split}.hdf5, ILSVRC-{split}.lmdb, {split}/)"
    )

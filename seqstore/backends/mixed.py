"""Several sources read as one store, for a mixed Loader: their records one after another,
with labels in one class list (the order of an epoch of a mix: :mod:`seqstore.engine.mix`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np

from .._version import __version__
from ..errors import ConfigError
from ..manifest import Manifest, Provenance
from ..records import Record
from .reader import Reader, read_across

__all__ = ["MixedReader", "union_classes"]


def union_classes(
    names: Sequence[str], classes: Sequence[Sequence[str]], offsets: Sequence[int | None]
) -> tuple[list[str], list[np.ndarray | int]]:
    """The class list of a mix, and for each source how its labels map into it.

    Sources with the same class names in the same order keep their labels. Otherwise each
    label becomes its class's index in the union of the names, in order of first appearance
    (the first source's order, then new names from the next), so the first source's labels
    never change and a class means the same whichever source a sample comes from. A source
    without class names adds its ``label_offset`` (an int in place of a table).

    Raises
    ------
    ConfigError
        A source without class names, mixed with named ones, has no ``label_offset``.
    """
    named = [c for c in classes if c]
    if named and any(not c and o is None for c, o in zip(classes, offsets, strict=True)):
        unnamed = [
            n for n, c, o in zip(names, classes, offsets, strict=True) if not c and o is None
        ]
        raise ConfigError(
            f"source '{unnamed[0]}' has no class names, and the others have: give it "
            "label_offset= (its labels are then offset into theirs), or class names"
        )
    union: dict[str, int] = {}
    for c in named:
        for name in c:
            union.setdefault(name, len(union))
    maps: list[np.ndarray | int] = []
    for c, o in zip(classes, offsets, strict=True):
        if not c:
            maps.append(o or 0)
        else:
            maps.append(np.array([union[name] for name in c], np.int64))
    return list(union), maps


class MixedReader(Reader):
    """The sources of a mix as one store: source ``i`` holds records ``offsets[i]`` to
    ``offsets[i + 1] - 1``; a block never crosses a source (:attr:`shard_bounds`).

    Records come out as their sources store them (their checksums hold); :meth:`relabel`
    puts a batch's labels into the mix's class list, and :meth:`source_key` names a bad
    record's source (``'a.lmdb/n01440764/x.JPEG'``). :meth:`labels` gives them mapped.

    Parameters
    ----------
    readers
        The sources' readers, in order.
    label_offsets
        Per source: an offset for its labels where it has no class names, or None.
    """

    def __init__(self, readers: Sequence[Reader], label_offsets: Sequence[int | None]) -> None:
        self.readers = list(readers)
        self.names = [os.fspath(r.location) for r in self.readers]
        self.place = self.readers[0].place
        self.location = " + ".join(self.names)
        classes, self._maps = union_classes(
            self.names, [r.classes for r in self.readers], label_offsets
        )
        same = all(r.classes == classes for r in self.readers)
        self._keep_labels = same and not any(label_offsets)
        self.stores_checksums = all(r.stores_checksums for r in self.readers)  # type: ignore[misc]
        self.labels_apart = all(r.labels_apart for r in self.readers)
        sizes = [len(r) for r in self.readers]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._bounds = np.unique(
            np.concatenate(
                [r.shard_bounds + o for r, o in zip(self.readers, self.offsets[:-1], strict=True)]
            )
        )
        identities = [r.identity for r in self.readers]
        self._manifest = Manifest(
            format="mix",
            format_version=1,
            num_records=int(self.offsets[-1]),
            total_bytes=sum(r.manifest.total_bytes for r in self.readers),
            classes=classes,
            provenance=Provenance(seqstore_version=__version__),
            store_id=hashlib.sha256(repr(identities).encode()).hexdigest()[:32],
        )

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def shard_bounds(self) -> np.ndarray:
        # docstring inherited
        return self._bounds.copy()

    def source_of(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which source, and which record of it, each mix position in ``indices`` is."""
        source = np.searchsorted(self.offsets, indices, side="right") - 1
        return source, np.asarray(indices) - self.offsets[source]

    def relabel(self, sources: np.ndarray, labels: np.ndarray) -> None:
        """Put ``labels``, as stored, of records of ``sources`` (one source index each) into
        the mix's class list, in place (a batch's, in the worker that made it: cheaper than
        a record made again with its checksum)."""
        if self._keep_labels:
            return
        for i, table in enumerate(self._maps):
            at = (sources == i) & (labels >= 0)
            if at.any():
                labels[at] = labels[at] + table if isinstance(table, int) else table[labels[at]]

    def source_key(self, source: int, key: str) -> str:
        """The key of a record of source ``source``, prefixed with the source, so that a bad
        record names where it lies."""
        return f"{self.names[source]}/{key}"

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        self._check_range(start, stop)
        return read_across(
            self.offsets, start, stop, lambda i, a, b: self.readers[i].read_block(a, b)
        )

    def labels(self) -> np.ndarray:
        # docstring inherited
        labels = np.concatenate([r.labels() for r in self.readers])
        sizes = np.diff(self.offsets)
        self.relabel(np.repeat(np.arange(len(self.readers)), sizes), labels)
        return labels

    def close(self) -> None:
        # docstring inherited
        for r in self.readers:
            r.close()

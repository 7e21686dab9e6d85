"""What the readers of other projects' files have in common: data read in place, from files
that hold their records in runs (tar shards, TFRecord files, Parquet files), with a record
table made at open.

:class:`FilesReader` keeps the table's labels and where each file's records begin, and
gives the :class:`~seqstore.backends.reader.Reader` defaults that follow from them; a
subclass reads the raw records of a run of one file (:meth:`FilesReader.read_run`).
:func:`probed` makes records of raw ones, their sizes read from the image headers, for any
reader whose data records no sizes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar

import numpy as np

from .._version import __version__
from ..errors import CorruptStoreError, NotAStoreError
from ..imaging.header import probe
from ..io.ranges import Source
from ..manifest import MANIFEST_NAME, Manifest, Provenance
from ..records import Record
from .folder.tree import load_classes
from .reader import Reader, store_manifest
from .staging import read_store_manifest

__all__ = ["FilesReader", "probed"]


def probed(raw: Iterable[tuple[str, int, bytes]], where: str) -> list[Record]:
    """Records of ``(key, label, bytes)`` triples, each image's size read from its header
    and its checksum computed (the data carries none seqstore made)."""
    out = []
    for key, label, data in raw:
        info = probe(data, f"{where}:{key}")
        out.append(Record.make(key, label, data, info.width, info.height))
    return out


class FilesReader(Reader):
    """Base of the readers of data files read in place, one byte source per file.

    A subclass finds its files with :meth:`open_files`, fills ``_labels`` (every record's
    label) and ``_bounds`` (where each file's records begin, and the total), calls
    :meth:`describe`, and implements :meth:`read_run`.
    """

    stores_checksums: ClassVar[bool] = False
    labels_apart = True
    #: The manifest's ``format``.
    format_name: ClassVar[str]

    files: list[str]
    sources: list[Source]
    _labels: np.ndarray
    _bounds: np.ndarray
    _manifest: Manifest

    def open_files(self, keep: Callable[[str], bool], what: str) -> None:
        """Find the data files: the place itself where it is one file, else every file under
        it whose name ``keep`` accepts, in sorted order; open a source of each.

        Raises
        ------
        NotAStoreError
            None is there (``what`` names the files looked for).
        PartialStoreError
            Nothing is there but the files a killed write left.
        """
        local = self.place.local
        if local is not None and not local.exists():
            read_store_manifest(local)  # names a write of files still running or killed
        found = self.place.files()
        names = [""] if found == [""] else [name for name in found if keep(name)]
        if not names:
            raise NotAStoreError(f"'{self.place.where}' holds no {what}")
        self.files = names
        self.sources = [self.place.source(name) for name in names]

    def describe(
        self,
        total_bytes: int,
        classes: str | os.PathLike[str] | Sequence[str] | None,
        found: Sequence[str] = (),
    ) -> None:
        """Make the manifest: the record count from ``_bounds``, the class names given, else
        those the data names (``found``). Files that seqstore wrote carry their manifest
        beside them: that one is kept, once its record count is checked.

        Raises
        ------
        CorruptStoreError
            The files hold another number of records than their manifest says.
        """
        n = int(self._bounds[-1])
        stored = self._stored()
        if stored is not None:
            if stored.num_records != n:
                raise CorruptStoreError(
                    f"'{self.place.where}' holds {n} records, not the {stored.num_records} its "
                    f"{MANIFEST_NAME} records (files missing or added); {self.place.remedy}"
                )
            if classes is not None:
                stored = stored.model_copy(update={"classes": load_classes(classes)})
            self._manifest = stored
            return
        self._manifest = Manifest(
            format=self.format_name,
            format_version=1,
            num_records=n,
            total_bytes=total_bytes,
            classes=load_classes(classes) if classes is not None else list(found),
            provenance=Provenance(seqstore_version=__version__, source=self.place.where),
        )

    def _stored(self) -> Manifest | None:
        """The manifest seqstore wrote beside the files, if it wrote them."""
        if self.files == [""] or self.place.pattern is not None:
            return None
        if not self.place.exists(MANIFEST_NAME):
            return None
        manifest = store_manifest(self.place)
        return manifest if manifest.format == self.format_name else None

    @property
    def manifest(self) -> Manifest:
        # docstring inherited
        return self._manifest

    @property
    def shard_bounds(self) -> np.ndarray:
        # docstring inherited
        return self._bounds.copy()

    def labels(self) -> np.ndarray:
        # docstring inherited
        return self._labels.copy()

    def read_run(self, file: int, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        """Keys, labels and bytes of records ``start`` to ``stop - 1`` (store-wide numbers),
        all of file ``file``."""
        raise NotImplementedError

    def read_raw_block(self, start: int, stop: int) -> list[tuple[str, int, bytes]]:
        # docstring inherited
        self._check_range(start, stop)
        out: list[tuple[str, int, bytes]] = []
        file = int(np.searchsorted(self._bounds, start, side="right")) - 1
        while start < stop:
            end = min(stop, int(self._bounds[file + 1]))
            if end > start:
                out += self.read_run(file, start, end)
                start = end
            file += 1
        return out

    def read_block(self, start: int, stop: int) -> list[Record]:
        # docstring inherited
        return probed(self.read_raw_block(start, stop), self.place.where)

    def close(self) -> None:
        # docstring inherited
        for source in self.sources:
            source.close()

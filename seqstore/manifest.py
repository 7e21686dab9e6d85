"""The store's own metadata file, ``seqstore.json``: read, write, validate.

A store is a directory. A sharded store is a directory of ordinary stores of one format
(``shard-00000``, ``shard-00001``, ...) under one manifest that lists them in record order
(:class:`Shard`); its record numbers run on from one shard to the next.

While a writer runs, its staging directory (see :mod:`seqstore.backends.staging`) holds
``seqstore.partial.json`` (what is being written, by which process, since when);
:meth:`Writer.finish` writes ``seqstore.json`` atomically (temporary file, fsync, rename)
and only then removes the partial marker. So a store is complete exactly when
``seqstore.json`` exists.

The manifest vouches for the data beside it: it records the size of each data file, a digest
of the store's index (labels, checksums, offsets: whatever the format keeps per record), and
a digest of its own content. A reader checks the sizes before it maps a file, so a truncated
file is refused instead of crashing the process, and an edited manifest (a record count
changed by hand, say) no longer matches its digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import CorruptStoreError, NotAStoreError, PartialStoreError

__all__ = [
    "MANIFEST_NAME",
    "PARTIAL_NAME",
    "PROGRESS_NAME",
    "Manifest",
    "Provenance",
    "Shard",
    "SkippedFile",
    "fsync_dir",
    "index_digest",
    "is_sharded",
    "is_store",
    "parse_manifest",
    "read_manifest",
    "write_json_atomic",
    "write_manifest",
]

MANIFEST_NAME = "seqstore.json"
PARTIAL_NAME = "seqstore.partial.json"
PROGRESS_NAME = "seqstore.progress.json"
MANIFEST_VERSION = 1


class SkippedFile(BaseModel):
    """A source file left out of the store, and why."""

    key: str
    reason: str


class Provenance(BaseModel):
    """How a store was written."""

    model_config = ConfigDict(extra="allow")

    seqstore_version: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    source: str | None = None
    source_format: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    skipped: list[SkippedFile] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)


class Shard(BaseModel):
    """One shard of a sharded store, as the store's manifest lists it.

    Attributes
    ----------
    name : str
        The shard's directory inside the store (``shard-00000``): an ordinary store with
        its own manifest and data files.
    start : int
        Store-wide number of the shard's first record.
    num_records : int
        Records in the shard: it holds records ``start`` to ``start + num_records - 1``.
    total_bytes : int
        Sum of the shard's records' encoded sizes.
    data_files : dict of str to int
        Size in bytes of each of the shard's data files, by name within its directory.
    index_digest : str or None
        The shard manifest's ``index_digest``: what the shard holds, whoever wrote it.
    digest : str
        The shard manifest's ``digest``: this very shard, not another one put in its place.
    """

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")
    start: int = Field(ge=0)
    num_records: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    data_files: dict[str, int] = Field(default_factory=dict)
    index_digest: str | None = None
    digest: str

    @property
    def stop(self) -> int:
        """Store-wide number one past the shard's last record."""
        return self.start + self.num_records


class Manifest(BaseModel):
    """Everything a reader needs to know about a store before opening its data.

    Attributes
    ----------
    manifest_version : int
        Version of this file's schema.
    format : str
        Name of the backend that wrote the store; :func:`seqstore.open` dispatches on it.
    format_version : int
        Version of that backend's on-disk layout.
    num_records : int
        Number of records in the store.
    total_bytes : int
        Sum of the records' encoded sizes.
    classes : list of str
        Class names; a record's label indexes this list.
    provenance : Provenance
        Who wrote the store, from what, with which options, and what was skipped.
    store_id : str or None
        A random id drawn when the store was finished: two stores at the same path (one
        replaced by the other) never share it. None for data that seqstore did not write.
    data_files : dict of str to int
        Size in bytes of each data file of the store, by name.
    index_digest : str or None
        SHA-256 of the format's per-record index, as the writer left it (see
        :func:`index_digest`; each backend's module says which arrays, in which order).
    shards : list of Shard or None
        The shards of a sharded store, in record order; None for a store of one data file.
        A sharded store's ``index_digest`` is :func:`index_digest` of its shards' index
        digests (ASCII, in order): it depends on the records alone, not on how many
        processes wrote them.
    digest : str or None
        SHA-256 of this manifest's other fields; None only for manifests made in memory.
    """

    model_config = ConfigDict(extra="forbid")

    manifest_version: int = MANIFEST_VERSION
    format: str
    format_version: int
    num_records: int = Field(ge=0)
    total_bytes: int = Field(ge=0)
    classes: list[str]
    provenance: Provenance
    store_id: str | None = None
    data_files: dict[str, int] = Field(default_factory=dict)
    index_digest: str | None = None
    shards: list[Shard] | None = None
    digest: str | None = None

    @model_validator(mode="after")
    def _shards_tile_the_store(self) -> Manifest:
        if self.shards is None:
            return self
        start = 0
        for shard in self.shards:
            if shard.start != start:
                raise ValueError(
                    f"shard '{shard.name}' starts at record {shard.start}, not {start}"
                )
            start = shard.stop
        if start != self.num_records:
            raise ValueError(f"the shards hold {start} records, not {self.num_records}")
        if sum(s.total_bytes for s in self.shards) != self.total_bytes:
            raise ValueError(f"the shards' bytes do not add up to {self.total_bytes}")
        if len({s.name for s in self.shards}) != len(self.shards):
            raise ValueError("two shards have the same name")
        return self

    @property
    def mean_record_bytes(self) -> float:
        """Mean encoded size of a record (1.0 for an empty store)."""
        return self.total_bytes / self.num_records if self.num_records else 1.0


def is_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory holding a store, complete or partial."""
    p = Path(path)
    return (p / MANIFEST_NAME).is_file() or (p / PARTIAL_NAME).is_file()


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a complete sharded store (its manifest lists shards)."""
    try:
        raw = json.loads((Path(path) / MANIFEST_NAME).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and raw.get("shards") is not None


def read_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read and validate the manifest of the store at ``path``.

    Raises
    ------
    PartialStoreError
        The store's writer never finished.
    NotAStoreError
        ``path`` holds no seqstore manifest, or an unreadable one.
    """
    p = Path(path)
    manifest = p / MANIFEST_NAME
    if not manifest.is_file():
        partial = p / PARTIAL_NAME
        if partial.is_file():
            raise PartialStoreError(_partial_message(p, partial))
        raise NotAStoreError(f"'{p}' is not a seqstore store (no {MANIFEST_NAME})")
    return parse_manifest(manifest.read_bytes(), str(manifest))


def parse_manifest(data: bytes, name: str) -> Manifest:
    """Validate the bytes of a manifest file, read from a disk or fetched from a URL.

    Parameters
    ----------
    data
        The file's content.
    name
        Its path or URL, for messages.

    Raises
    ------
    NotAStoreError
        ``data`` is not a valid manifest.
    CorruptStoreError
        It does not match its digest (edited or damaged).
    """
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        digest = raw.get("digest")
        if digest is not None and digest != _digest(raw):
            raise CorruptStoreError(
                f"'{name}' was edited or damaged: it no longer matches its digest; "
                "re-create the store with seqstore convert (editing a manifest by hand can "
                "make a store read wrong records)"
            )
        return Manifest.model_validate(raw)
    except (ValidationError, ValueError) as exc:
        first = str(exc).splitlines()[0]
        raise NotAStoreError(
            f"'{name}' is not a valid seqstore manifest ({first}); "
            "re-create the store with seqstore convert"
        ) from None


def index_digest(*parts: bytes) -> str:
    """The manifest's ``index_digest``: SHA-256 of a format's index arrays, as raw bytes,
    one after the other in the order the format documents."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _digest(raw: dict[str, Any]) -> str:
    body = {k: v for k, v in raw.items() if k != "digest"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def write_manifest(directory: Path, manifest: Manifest) -> Manifest:
    """Write ``manifest`` into ``directory`` atomically, sealed with its digest.

    Returns
    -------
    Manifest
        The manifest as written, ``digest`` included.
    """
    # A store of one data file says nothing of shards, as manifests did before them.
    exclude = {"digest"} | ({"shards"} if manifest.shards is None else set())
    raw = manifest.model_dump(mode="json", exclude=exclude)
    raw["digest"] = _digest(raw)
    write_json_atomic(directory / MANIFEST_NAME, raw)
    return Manifest.model_validate(raw)


def _partial_message(store: Path, partial: Path) -> str:
    try:
        info = json.loads(partial.read_text())
        since = f" (writer pid {info.get('pid')} started {info.get('started')})"
    except (OSError, ValueError):
        since = ""
    return (
        f"store '{store}' is incomplete: its writer did not finish{since}; "
        "write it again with --overwrite"
    )


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so that readers see the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make the renames inside the directory ``path`` durable (where the platform allows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)

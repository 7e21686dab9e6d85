"""Options of a conversion (``seqstore convert``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["ConvertConfig"]


class ConvertConfig(BaseModel):
    """Options of :func:`seqstore.convert.convert` and ``seqstore convert``.

    Attributes
    ----------
    format : str
        Backend to write (``lmdb``, ``hdf5``, ``folder`` or a registered plugin).
    workers : int
        Processes that read and check source files, or with ``shard_mb`` that each write
        whole shards; 0 does it in this process. The store is the same whatever this is.
    shuffle : bool or None
        Write records in a seeded random order. ``None`` shuffles image-folder training trees
        (so that local shuffling at load time approximates a global one) and keeps the order
        of stores and labelled validation folders.
    seed : int
        Seed of the write order.
    max_side : int or None
        Re-encode images whose longer side exceeds this, scaled down to it.
    quality : int or None
        JPEG quality of re-encoded images (default 90); given alone, re-encodes every image.
    labels : Path or None
        Label file of a flat validation folder.
    classes : Path or None
        Class names: a file with one per line, or the training split's image folder.
    on_error : {"raise", "skip"}
        What to do with a source file that is not a decodable image: end the conversion with
        an error naming it (``"raise"``, as the Loader's word is; ``"fail"``, the old word,
        is still taken), or leave it out (``"skip"``): skipped files are listed in the
        manifest and the summary.
    check : {"decode", "header"}
        How each source image is checked: ``"decode"`` decodes it with the loader's decoder
        (:func:`seqstore.imaging.decode.decode`), so what converts also trains; ``"header"`` reads
        only its header and end marker, faster but blind to damaged image data.
    max_pixels : int or None
        Refuse images with more pixels than this, from their header (default: PIL's
        decompression-bomb limit, 178,956,970); None for no limit of seqstore's own.
    overwrite : bool
        Replace a store already at the destination.
    resume : bool
        Continue a conversion to the same destination, with the same source and options, that
        was killed: the records it had made durable are kept, and the result is the same as
        an uninterrupted run. Without one to continue, start afresh. LMDB and HDF5 only.
    checkpoint_mb : float
        Megabytes written between the checkpoints ``resume`` continues from (each costs an
        fsync).
    shard_mb : float or None
        Write a sharded store, shards of about this many MB of source images, written in
        parallel by the ``workers`` processes (or the ranks of a ``distributed`` run). Which
        records go into which shard depends on the source alone: a shard holds this many MB
        over the source's mean record size of consecutive records of the write order. To a
        URL, each shard is uploaded as soon as it is written, the store's manifest last.
    distributed : bool
        Share a sharded conversion among the ranks of a torch.distributed job (``torchrun``;
        ``seqstore convert`` turns this on by itself under torchrun): rank 0 lists the source
        and broadcasts it, every rank writes its shards, rank 0 the manifest. Shards of
        1024 MB unless ``shard_mb`` says otherwise.
    source_format : str or None
        Read the source with this backend instead of recognising it.
    reader_options : dict
        Options of the source's reader, as ``seqstore.open`` takes them
        (``label_offset=-1`` for the TFRecord files of TF's ImageNet scripts,
        ``image_field=`` ...).
    limit : int or None
        Convert only the first ``limit`` records of the write order (a random subset when
        shuffling).
    progress : bool
        Show a progress bar.
    storage_options : dict
        For a destination URL (``s3://bucket/train.h5``, any fsspec URL): the fsspec
        filesystem's options; by default the environment's (``AWS_ACCESS_KEY_ID``,
        ``AWS_ENDPOINT_URL`` ...).
    staging_dir : Path or None
        For a destination URL: where the store is written before it is uploaded (it needs
        the store's size free); default: the system's temporary directory.
    """

    model_config = ConfigDict(extra="forbid")

    format: str
    workers: int = Field(0, ge=0, le=256)
    shuffle: bool | None = None
    seed: int = Field(0, ge=0)
    max_side: int | None = Field(None, gt=0)
    quality: int | None = Field(None, ge=1, le=100)
    labels: Path | None = None
    classes: Path | None = None
    on_error: Literal["raise", "skip", "fail"] = "raise"

    @field_validator("on_error")
    @classmethod
    def _one_word(cls, value: str) -> str:
        return "raise" if value == "fail" else value

    check: Literal["decode", "header"] = "decode"
    # PIL's limit (seqstore.imaging.header.MAX_PIXELS), spelt out to keep this module light.
    max_pixels: int | None = Field(2 * 89_478_485, gt=0)
    overwrite: bool = False
    resume: bool = False
    checkpoint_mb: float = Field(256.0, gt=0)
    shard_mb: float | None = Field(None, gt=0)
    distributed: bool = False
    source_format: str | None = None
    reader_options: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(None, ge=1)
    progress: bool = True
    storage_options: dict[str, Any] = Field(default_factory=dict)
    staging_dir: Path | None = None

"""Options of ``seqstore bench``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .loader import check_transform_name

__all__ = ["BenchConfig"]


class BenchConfig(BaseModel):
    """Options of ``seqstore bench``.

    Attributes
    ----------
    src : Path
        An image folder or a store; formats it is not in are converted into ``out``.
    formats : list of str
        Backends to compare.
    workers : int
        Loader worker processes (and processes of the ceiling).
    batch_size : int
        Samples per batch.
    transform : {"imagenet_train", "imagenet_val", "decode", "none"}
        What each loader does per image.
    image_size : int
        Output side of the transforms.
    limit : int or None
        Use only this many records (a random subset of a folder).
    repeat : int
        Timed repetitions of each measurement; the median is reported.
    min_seconds : float
        Each timed repetition runs whole epochs until at least this long, so that a small
        store is timed over several epochs rather than a fraction of a second.
    cold : bool
        Drop the page cache before every timed run (root on Linux).
    out : Path
        Working directory: converted stores (reused by the next run), JSON, chart.
    shuffle_buffer_mb : float
        The Loader's shuffle buffer under test, in MB of encoded records (as LoaderConfig).
    block_mb : float
        The Loader's read size under test, in MB of consecutive records (as LoaderConfig).
    baselines : bool
        Also run the torchvision-style and tensorpack pipelines.
    reencode_max_side : int or None
        Also measure the first format converted with ``--max-side`` this and ``--quality``
        ``reencode_quality``, against the original bytes (None: not; ``--reencode-max-side
        0`` on the command line). Images are then stored no larger than this, re-encoded,
        as FFCV stores them.
    reencode_quality : int
        JPEG quality of that store's re-encoded images.
    """

    model_config = ConfigDict(extra="forbid")

    src: Path
    formats: list[str] = Field(default_factory=lambda: ["lmdb", "hdf5", "folder"], min_length=1)
    workers: int = Field(2, ge=0, le=256)
    batch_size: int = Field(64, ge=1)
    transform: str = "imagenet_train"
    image_size: int = Field(224, ge=1)
    limit: int | None = Field(None, ge=1)
    repeat: int = Field(3, ge=1)
    min_seconds: float = Field(2.0, ge=0)
    cold: bool = False
    out: Path = Path("seqstore-bench")
    shuffle_buffer_mb: float = Field(64.0, gt=0)
    block_mb: float = Field(4.0, gt=0)
    baselines: bool = True
    reencode_max_side: int | None = Field(512, gt=0)
    reencode_quality: int = Field(90, ge=1, le=100)

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, value: str) -> str:
        check_transform_name(value)
        return value

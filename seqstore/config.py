"""Validated configuration of seqstore's jobs (pydantic models)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError
from .imaging.imagenet import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BenchConfig", "ConvertConfig", "LoaderConfig", "load_config"]

M = TypeVar("M", bound=BaseModel)


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
    on_error : {"fail", "skip"}
        What to do with a source file that is not a decodable image. Skipped files are listed
        in the manifest and the summary.
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
    on_error: Literal["fail", "skip"] = "fail"
    check: Literal["decode", "header"] = "decode"
    # PIL's limit (seqstore.imaging.header.MAX_PIXELS), spelt out to keep this module light.
    max_pixels: int | None = Field(2 * 89_478_485, gt=0)
    overwrite: bool = False
    resume: bool = False
    checkpoint_mb: float = Field(256.0, gt=0)
    shard_mb: float | None = Field(None, gt=0)
    distributed: bool = False
    source_format: str | None = None
    limit: int | None = Field(None, ge=1)
    progress: bool = True
    storage_options: dict[str, Any] = Field(default_factory=dict)
    staging_dir: Path | None = None


class LoaderConfig(BaseModel):
    """Options of :class:`seqstore.Loader`, validated before any worker starts.

    Attributes
    ----------
    path : Path or str
        A store, an image folder, or (with ``split``) a dataset root holding ``train``/``val``;
        or the URL of a store or of a root of stores (``s3://bucket/train.h5``, ``gs://``,
        ``https://``, any fsspec URL), kept as a string.
    storage_options : dict
        For a URL: the fsspec filesystem's options (credentials, ``client_kwargs`` with an
        ``endpoint_url`` ...); by default the environment's (``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``AWS_PROFILE`` ...).
    cache_dir : Path or None
        For a URL: a local directory that keeps whole copies of the store's data files, so
        that later epochs read them from disk; shared safely by processes and loaders.
    cache_limit_gb : float or None
        The most GB ``cache_dir`` holds; least recently used copies are removed first.
        None: no limit.
    backend : str or None
        Read with this backend instead of the one the store's manifest names.
    split : {"train", "val"} or None
        Pick a split under ``path``, the first found of: ``path/<split>.lmdb|.h5|.hdf5``,
        tensorpack's ``path/ILSVRC-<split>.lmdb``, ``path/<split>`` (a store or image
        folder), or the Tiny-ImageNet / ILSVRC val layout ``path/val/images`` +
        ``path/val/val_annotations.txt`` mapped onto ``path/train``'s classes.
    reader_options : dict
        Passed to the backend's reader: for example ``labels`` and ``classes`` of a flat val
        folder, or ``direct_io`` of LMDB and HDF5 stores (read blocks that are not in the
        page cache with ``O_DIRECT``; by default when the store is larger than memory).
    transform : str, Pipeline, callable or None
        ``"imagenet_train"`` (RandomResizedCrop + flip), ``"imagenet_val"`` (Resize +
        CenterCrop), ``"decode"`` (decoded images of their own sizes, delivered as a list of
        uint8 CHW tensors), ``"none"`` (encoded bytes), a
        :class:`seqstore.transforms.Pipeline`, or your own callable on a decoded image (see
        ``image_format``). Default: ``imagenet_train`` when shuffling, else ``imagenet_val``.
    image_size, resize_size : int
        Output side of the built-in pipelines, and the shorter side ``imagenet_val`` resizes to.
    image_format : {"numpy", "pil"}
        What your own callable receives: an RGB uint8 HWC array, or a PIL image (for
        torchvision transforms).
    batch_size : int
    num_workers : int
        Worker processes; 0 loads in the main process.
    shuffle : bool
        Permute blocks per epoch and mix records in a shuffle buffer (over a store in class
        order, each batch drawing from every worker's; an image folder read in place:
        permute its records); otherwise storage order.
    seed : int
        Fixes the order and the augmentation of every epoch.
    shuffle_buffer : int or None
        Records held for shuffling across all workers of a rank; default from
        ``shuffle_buffer_mb``.
    shuffle_buffer_mb : float
        Shuffle buffer in MB of encoded images, converted to records with the store's mean
        record size.
    block_mb : float
        MB per sequential read; over a store whose labels come in runs of one class, reads
        are shortened so that each worker's buffer spans 8 of them (see
        :mod:`seqstore.mixcheck`).
    drop_last : bool
        Drop the last incomplete batch (and the records that do not split evenly over ranks);
        otherwise the last batch is short and ranks are padded by wrapping around.
    pin_memory : bool or None
        Pin batches in page-locked memory; default: when ``device`` is CUDA.
    device : str
        Where batches are delivered and normalised: ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
    dtype : {"float32", "float16", "bfloat16", "uint8"}
        Output dtype of images; ``uint8`` skips normalisation.
    normalize : bool
        Apply ``(x / 255 - mean) / std`` on the device.
    mean, std : tuple of 3 floats
        Normalisation constants on the 0..1 scale (ImageNet's by default).
    channels_last : bool
        Deliver images in channels-last memory format (NCHW shape, NHWC strides).
    rank, world_size : int or None
        This process's rank and the number of ranks; default: from ``torch.distributed``
        when initialised, else the ``RANK`` / ``WORLD_SIZE`` environment, else 0 / 1.
    prefetch_factor : int
        Batches each worker prepares ahead. With a fixed output size (the named transforms,
        or a callable whose outputs share one shape) each worker writes into
        ``prefetch_factor + 2`` reused shared-memory batch buffers, reserved when the loader
        is made. On the CPU the loop gets the buffer itself, which goes back to its worker
        when the batch is dropped; a batch kept longer is never overwritten.
    with_indices : bool
        Also yield each batch's store positions (``images, labels, indices``).
    verify : bool
        Check each record against the checksum stored with it as it is read (CRC-32, about
        1% of the loader's time). Data without stored checksums (image folders, tensorpack
        files) is read unchecked either way.
    on_error : {"raise", "skip"}
        What a bad record does: one that fails its checksum, or whose bytes the decoder
        rejects (:class:`~seqstore.errors.BadImageError` or another seqstore error from
        decoding or a built-in transform). ``"raise"`` ends the epoch with a
        :class:`~seqstore.errors.BadRecordError` naming the record and the store;
        ``"skip"`` puts another sample of the same batch in its place and warns once per
        record (see :class:`seqstore.Loader`). Exceptions raised by your own transform are
        never skipped.
    max_bad : int, float or None
        With ``on_error="skip"``, raise anyway once more records than this went bad in one
        epoch on this rank: a count, or (a float) a fraction of the rank's samples per epoch.
        ``None``: no limit.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    path: Path | str
    storage_options: dict[str, Any] = Field(default_factory=dict)
    cache_dir: Path | None = None
    cache_limit_gb: float | None = Field(None, gt=0)
    backend: str | None = None
    split: Literal["train", "val"] | None = None
    reader_options: dict[str, Any] = Field(default_factory=dict)
    transform: Any = None
    image_size: int = Field(224, ge=1)
    resize_size: int = Field(256, ge=1)
    image_format: Literal["numpy", "pil"] = "numpy"
    batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0, le=256)
    shuffle: bool = True
    seed: int = Field(0, ge=0)
    shuffle_buffer: int | None = Field(None, ge=1)
    shuffle_buffer_mb: float = Field(256.0, gt=0)
    block_mb: float = Field(4.0, gt=0)
    drop_last: bool = False
    pin_memory: bool | None = None
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16", "uint8"] = "float32"
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channels_last: bool = False
    rank: int | None = Field(None, ge=0)
    world_size: int | None = Field(None, ge=1)
    prefetch_factor: int = Field(2, ge=1)
    with_indices: bool = False
    verify: bool = True
    on_error: Literal["raise", "skip"] = "raise"
    max_bad: int | float | None = None

    @field_validator("path", mode="before")
    @classmethod
    def _path_or_url(cls, value: Any) -> Any:
        # A URL stays text: as a Path, "s3://b/k" would lose a slash.
        if isinstance(value, str) and "://" in value:
            return value
        return Path(value) if isinstance(value, str) else value

    @field_validator("max_bad", mode="before")
    @classmethod
    def _valid_max_bad(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, type(None))):
            raise ValueError(f"max_bad={value!r} must be a count (int) or a fraction (float)")
        if isinstance(value, int) and value < 0:
            raise ValueError(f"max_bad={value} is negative; give a count >= 0")
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise ValueError(f"max_bad={value} is not a fraction in [0, 1]; give a count as int")
        return value

    @field_validator("transform")
    @classmethod
    def _known_transform(cls, value: Any) -> Any:
        if isinstance(value, str):
            _check_transform_name(value)
        if value is not None and not isinstance(value, str) and not callable(value):
            raise ValueError("transform must be a name, a Pipeline or a callable")
        return value

    @field_validator("std")
    @classmethod
    def _positive_std(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) <= 0:
            raise ValueError("every std must be > 0")
        return value

    @field_validator("device")
    @classmethod
    def _valid_device(cls, value: str) -> str:
        import torch

        try:
            device = torch.device(value)
        except RuntimeError:
            raise ValueError(f"{value!r} is not a torch device (try 'cpu' or 'cuda')") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {value!r} asked for, but this machine has no CUDA GPU")
        return value

    @model_validator(mode="after")
    def _rank_in_world(self) -> LoaderConfig:
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} must be below world_size {self.world_size}")
        return self


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
        _check_transform_name(value)
        return value


def _check_transform_name(name: str) -> None:
    # Imported here: the transforms need OpenCV, which validating a convert config does not.
    from .transforms import NAMED_TRANSFORMS

    if name not in NAMED_TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(NAMED_TRANSFORMS)}")


def load_config(
    model: type[M], source: M | dict[str, Any] | str | Path | None = None, **overrides: Any
) -> M:
    """Build a config from a model instance, a dict, or a JSON/YAML file, plus overrides.

    Raises
    ------
    ConfigError
        A value is invalid; the message names the field and the problem.
    """
    if isinstance(source, model):
        data = source.model_dump()
    elif isinstance(source, (str, Path)):
        data = _read_file(Path(source))
    else:
        data = dict(source or {})
    data.update(overrides)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_one_line(exc, model.__name__)) from None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file '{path}': {exc.strerror}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of option names to values")
    return data


def _one_line(exc: ValidationError, name: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or name
        parts.append(f"{loc}={err.get('input')!r}: {err['msg']}")
    return f"invalid {name}: " + "; ".join(parts)

"""Options of a Loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..imaging.imagenet import IMAGENET_MEAN, IMAGENET_STD
from .mix import mix_sources

__all__ = ["LoaderConfig", "check_transform_name"]


class LoaderConfig(BaseModel):
    """Options of :class:`seqstore.Loader`, validated before any worker starts.

    Attributes
    ----------
    path : Path or str
        A store, an image folder, or (with ``split``) a dataset root holding ``train``/``val``;
        or the URL of a store or of a root of stores (``s3://bucket/train.h5``, ``gs://``,
        ``https://``, any fsspec URL), kept as a string. A list: several sources mixed in
        each epoch, each a path or a :class:`~seqstore.config.mix.MixSource` (or its dict)
        with its own ``weight``, ``repeat`` or ``choose`` (see docs/mixing.md).
    weights : list of float or None
        With a list of paths: each source's weight (default: 1 each).
    epoch_size : int or None
        With a list of sources: records per epoch (default: the sum of their sizes).
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
    channels : {"rgb", "bgr"}
        The channel order of the built-in pipelines' images (``mean`` and ``std`` stay in
        RGB order): ``"bgr"`` for models trained on OpenCV's order, as the old sequential
        ImageNet loaders delivered it.
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
    pad_ranks : bool
        Without ``drop_last``, give every rank as many samples by wrapping around to the
        epoch's start, as ``DistributedSampler`` does, so that ranks run the same number of
        batches (DDP training needs that). False: every record exactly once over all ranks,
        the first ``num_records % world_size`` ranks one more, so their batch counts may
        differ by one: exact evaluation, with no image counted twice in a metric (do not
        train DDP so: a rank with a batch fewer leaves the others waiting).
    pin_memory : bool or None
        Pin batches in page-locked memory; default: when ``device`` is CUDA.
    device : str
        Where batches are delivered and normalised: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, or
        ``"auto"``: ``"cuda"`` where ``torch.cuda.is_available()``, else ``"cpu"`` (the
        validated config holds the device chosen). A CUDA device on a machine without one
        is a :class:`~seqstore.errors.ConfigError`.
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

    path: Path | str | list[Any]
    weights: list[float] | None = None
    epoch_size: int | None = Field(None, ge=1)
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
    channels: Literal["rgb", "bgr"] = "rgb"
    batch_size: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0, le=256)
    shuffle: bool = True
    seed: int = Field(0, ge=0)
    shuffle_buffer: int | None = Field(None, ge=1)
    shuffle_buffer_mb: float = Field(256.0, gt=0)
    block_mb: float = Field(4.0, gt=0)
    drop_last: bool = False
    pad_ranks: bool = True
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
    on_error: Literal["raise", "skip", "fail"] = "raise"
    max_bad: int | float | None = None

    @field_validator("path", mode="before")
    @classmethod
    def _path_or_url(cls, value: Any) -> Any:
        # A URL stays text: as a Path, "s3://b/k" would lose a slash.
        if isinstance(value, str) and "://" in value:
            return value
        return Path(value) if isinstance(value, str) else value

    @field_validator("on_error")
    @classmethod
    def _one_word(cls, value: str) -> str:
        return "raise" if value == "fail" else value  # convert's old word for it

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
            check_transform_name(value)
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

        if value == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(value)
        except RuntimeError:
            raise ValueError(
                f"{value!r} is not a torch device (try 'cpu', 'cuda' or 'auto')"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {value!r} asked for, but this machine has no CUDA GPU; "
                "use device='cpu', or device='auto' for CUDA where there is one"
            )
        return value

    @model_validator(mode="after")
    def _rank_in_world(self) -> LoaderConfig:
        if self.rank is not None and self.world_size is not None and self.rank >= self.world_size:
            raise ValueError(f"rank {self.rank} must be below world_size {self.world_size}")
        if isinstance(self.path, list):
            mix_sources(self.path, self.weights)  # each source valid, one share each
            if self.split is not None:
                raise ValueError(
                    "split= names one dataset's split; give each source's own path "
                    "(or its reader_options={'split': ...})"
                )
        elif self.weights is not None or self.epoch_size is not None:
            raise ValueError("weights= and epoch_size= are for a list of sources")
        if self.drop_last and not self.pad_ranks:
            raise ValueError(
                "pad_ranks=False is exact evaluation, every record once; drop_last=True "
                "leaves the last records out: choose one"
            )
        return self


def check_transform_name(name: str) -> None:
    """Refuse a transform name that :data:`seqstore.transforms.NAMED_TRANSFORMS` lacks.

    Raises
    ------
    ValueError
        The name is unknown; the message lists the known ones.
    """
    # Imported here: the transforms need OpenCV, which validating a convert config does not.
    from ..transforms import NAMED_TRANSFORMS

    if name not in NAMED_TRANSFORMS:
        raise ValueError(f"unknown transform {name!r}; choose one of {', '.join(NAMED_TRANSFORMS)}")

"""Drop-in replacements for the sequential ImageNet loaders seqstore grew out of.

``ImagenetLoader`` and ``LMDBLoader`` take the arguments of the old ``imagenet_seq``
classes and read the same ``ILSVRC-train.lmdb`` / ``ILSVRC-val.lmdb`` files (tensorpack
LMDBSerializer format), or any seqstore store or image folder, through the new engine:
per-epoch determinism, exact ``len()``, ``drop_last``, workers as processes, resume.

They give the old inputs by default: BGR channels, float ``x / 128 - 1`` in NCHW (unless you
pass a transform), the last partial batch dropped, 4 worker processes, and ``LMDBLoader``'s
positional arguments in their old order (``cache`` fifth). What they do not copy is said
once, in a :class:`~seqstore.errors.SeqstoreWarning`: the old training augmentation's colour
jitter and PCA lighting noise (the crop and flip are seqstore's RandomResizedCrop and flip).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ConfigError, SeqstoreWarning
from .pytorch import Loader

__all__ = ["ImagenetLoader", "LMDBLoader"]

# The old loaders delivered x / 128 - 1: normalisation with mean = std = 128/255.
_HALF = (128 / 255, 128 / 255, 128 / 255)
_warned: list[bool] = []


def _announce(mode: str) -> None:
    """Say once per process what the old training inputs had that these do not."""
    if mode != "train" or _warned:
        return
    _warned.append(True)
    warnings.warn(
        "seqstore.compat gives the old loaders' BGR channels, x / 128 - 1 scale, batch counts "
        "and worker default, but not their colour jitter and PCA lighting augmentation: pass "
        "transform= (a callable of PIL images) for them",
        SeqstoreWarning,
        stacklevel=3,
    )


def _locate(imagenet_dir: Path, mode: str) -> Path:
    if mode not in ("train", "val"):
        raise ConfigError(f"mode must be 'train' or 'val', got {mode!r}")
    tensorpack_file = imagenet_dir / f"ILSVRC-{mode}.lmdb"
    return tensorpack_file if tensorpack_file.exists() else imagenet_dir


class ImagenetLoader(Loader):
    """``imagenet_seq.data.ImagenetLoader`` on the seqstore engine.

    Parameters
    ----------
    imagenet_dir
        Folder holding ``ILSVRC-<mode>.lmdb``, or a dataset root with ``train``/``val``.
    mode : {"train", "val"}
        Which split; ``train`` gets RandomResizedCrop + flip, ``val`` Resize + CenterCrop.
    transform
        Optional torchvision-style callable applied to each PIL image instead.
    batch_size, shuffle, num_workers, drop_last
        As before (4 workers; the last partial batch dropped). ``shuffle`` permutes blocks
        and mixes records per epoch.
    cache
        Shuffle buffer in records (the old LocallyShuffleData size).
    cuda
        Deliver batches on the GPU (uint8 over PCIe, converted there).
    channels
        ``"bgr"``, the old order, or ``"rgb"``.
    """

    def __init__(
        self,
        imagenet_dir: str | os.PathLike[str],
        mode: str,
        transform: Callable[[Any], Any] | None = None,
        batch_size: int = 256,
        shuffle: bool = False,
        num_workers: int = 4,
        cache: int = 50000,
        drop_last: bool = True,
        cuda: bool = False,
        channels: str = "bgr",
        **options: Any,
    ) -> None:
        root = Path(imagenet_dir)
        path = _locate(root, mode)
        split = mode if path == root else None
        named = "imagenet_train" if mode == "train" else "imagenet_val"
        if transform is None:
            _announce(mode)
        super().__init__(
            path,
            split=split,
            transform=transform if transform is not None else named,
            image_format="pil" if transform is not None else "numpy",
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            shuffle_buffer=cache,
            drop_last=drop_last,
            device="cuda" if cuda else "cpu",
            mean=_HALF,
            std=_HALF,
            channels=channels,
            **options,
        )


class LMDBLoader(ImagenetLoader):
    """``LMDBLoader(mode, batch_size, shuffle, num_workers, cache, cuda)``: the files under
    ``$IMAGENET``.

    Reads ``$IMAGENET/ILSVRC-<mode>.lmdb`` as the old loader did, its arguments in their old
    order.
    """

    def __init__(
        self,
        mode: str,
        batch_size: int = 256,
        shuffle: bool = False,
        num_workers: int = 4,
        cache: int = 50000,
        cuda: bool = False,
        **options: Any,
    ) -> None:
        root = os.environ.get("IMAGENET")
        if not root:
            raise ConfigError(
                "LMDBLoader reads $IMAGENET/ILSVRC-<mode>.lmdb; set IMAGENET to that folder"
            )
        super().__init__(
            root,
            mode,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=num_workers,
            cache=cache,
            cuda=cuda,
            **options,
        )

"""The named transforms: the one table the Loader, its config and the CLI take names from."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from .geometry import CenterCrop, RandomHorizontalFlip, RandomResizedCrop, Resize
from .pipeline import Pipeline

__all__ = ["NAMED_TRANSFORMS", "decode_only", "imagenet_train", "imagenet_val"]


def imagenet_train(size: int = 224) -> Pipeline:
    """The standard ImageNet training augmentation: RandomResizedCrop(size) + horizontal flip.

    Parameters
    ----------
    size
        Side of the square output.

    Returns
    -------
    Pipeline
        ``uint8`` outputs of ``(size, size, 3)``; normalisation is left to the loader.
    """
    return Pipeline([RandomResizedCrop(size), RandomHorizontalFlip()])


def imagenet_val(size: int = 224, resize: int = 256) -> Pipeline:
    """The standard ImageNet evaluation transform: Resize(resize) + CenterCrop(size).

    Parameters
    ----------
    size
        Side of the square output.
    resize
        Length the shorter side is resized to before the centre crop.

    Returns
    -------
    Pipeline
        ``uint8`` outputs of ``(size, size, 3)``; normalisation is left to the loader.
    """
    return Pipeline([Resize(resize), CenterCrop(size)])


def decode_only() -> Pipeline:
    """Decode to RGB ``uint8`` and nothing else; outputs keep their images' sizes.

    Returns
    -------
    Pipeline
    """
    return Pipeline([])


#: Name -> ``make(image_size, resize_size)``, the pipeline a Loader (``transform="name"``)
#: runs; ``"none"`` makes None: the loader delivers the encoded bytes. Read-only.
NAMED_TRANSFORMS: Mapping[str, Callable[[int, int], Pipeline | None]] = MappingProxyType(
    {
        "imagenet_train": lambda image_size, resize_size: imagenet_train(image_size),
        "imagenet_val": imagenet_val,
        "decode": lambda image_size, resize_size: decode_only(),
        "none": lambda image_size, resize_size: None,
    }
)

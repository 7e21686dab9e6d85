"""Geometric transforms: random resized crop, resize, centre crop, horizontal flip.

Parameters mean what they mean in ``torchvision.transforms`` and the random parameters are
drawn by the same algorithms; images are resized with OpenCV rather than PIL. The two that
resize also plan a reduced JPEG decode (``plan_decode``, see
:class:`~seqstore.transforms.pipeline.Pipeline`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError
from ..imaging.decode import REDUCE_FACTORS
from .pipeline import DecodePlan

__all__ = ["CenterCrop", "RandomHorizontalFlip", "RandomResizedCrop", "Resize"]

_INTERPOLATIONS = {
    cv2.INTER_NEAREST: "INTER_NEAREST",
    cv2.INTER_LINEAR: "INTER_LINEAR",
    cv2.INTER_CUBIC: "INTER_CUBIC",
    cv2.INTER_AREA: "INTER_AREA",
    cv2.INTER_LANCZOS4: "INTER_LANCZOS4",
    cv2.INTER_LINEAR_EXACT: "INTER_LINEAR_EXACT",
    cv2.INTER_NEAREST_EXACT: "INTER_NEAREST_EXACT",
}


class RandomResizedCrop:
    """Crop a random area and aspect ratio, then resize it: torchvision's ``RandomResizedCrop``.

    Parameters
    ----------
    size
        Output size: an int for a square, or ``(height, width)``.
    scale
        Range of the crop's area as a fraction of the image's.
    ratio
        Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    interpolation
        OpenCV interpolation flag for the resize (``cv2.INTER_LINEAR`` by default).
    """

    def __init__(
        self,
        size: int | tuple[int, int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        interpolation: int = cv2.INTER_LINEAR,
    ) -> None:
        self.size = _pair(size, "RandomResizedCrop size")
        if not 0 < scale[0] <= scale[1]:
            raise ConfigError(
                f"RandomResizedCrop scale={scale!r} is not a range (min, max) with 0 < min <= max"
            )
        if not 0 < ratio[0] <= ratio[1]:
            raise ConfigError(
                f"RandomResizedCrop ratio={ratio!r} is not a range (min, max) with 0 < min <= max"
            )
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolation = _check_interpolation(interpolation)

    def get_params(
        self, width: int, height: int, rng: np.random.Generator
    ) -> tuple[int, int, int, int]:
        """Draw a crop box for an image of this size, as torchvision does.

        Up to 10 attempts draw an area (``uniform(*scale)`` of the image's) and a log-uniform
        aspect ratio; the first box that fits is placed uniformly at random. If none fits,
        the box is the central crop with the aspect ratio clamped into ``ratio``.

        Parameters
        ----------
        width, height
            Size of the image to crop, in pixels.
        rng
            Where the draws come from: per attempt ``uniform`` (area), ``uniform`` (log
            ratio), then ``integers`` (top) and ``integers`` (left) for the box that fits.

        Returns
        -------
        tuple of int
            ``(top, left, height, width)`` of the crop.
        """
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
            w = round(math.sqrt(target_area * aspect))
            h = round(math.sqrt(target_area / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, round(width / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            w, h = round(height * self.ratio[1]), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Crop ``img`` at a random box from :meth:`get_params` and resize it to ``size``."""
        top, left, h, w = self.get_params(img.shape[1], img.shape[0], rng)
        return self._resize(img[top : top + h, left : left + w])

    def plan_decode(self, width: int, height: int, rng: np.random.Generator) -> DecodePlan:
        """Draw the crop box as :meth:`__call__` does; decode only its window, reduced as far
        as the crop still holds ``size``."""
        box = self.get_params(width, height, rng)
        reduce = _largest_reduce(box[3], box[2], self.size)
        return DecodePlan(reduce, _window(box, reduce), self._resize)

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return self.size

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return dtype

    def _resize(self, crop: np.ndarray) -> np.ndarray:
        out_h, out_w = self.size
        return cv2.resize(crop, (out_w, out_h), interpolation=self.interpolation)

    def __repr__(self) -> str:
        return (
            f"RandomResizedCrop(size={self.size}, scale=({self.scale[0]:.4g}, "
            f"{self.scale[1]:.4g}), ratio=({self.ratio[0]:.4g}, {self.ratio[1]:.4g}), "
            f"interpolation={_INTERPOLATIONS[self.interpolation]})"
        )


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``.

    Parameters
    ----------
    p
        Probability of flipping; one ``rng.random()`` draw per call decides.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"RandomHorizontalFlip p={p!r} is not a probability in [0, 1]")
        self.p = float(p)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return ``img`` mirrored (a new array) or ``img`` itself."""
        if rng.random() < self.p:
            return cv2.flip(img, 1)
        return img

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return size

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return dtype

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p:g})"


class Resize:
    """Resize to a fixed size, or the shorter side to a length: torchvision's ``Resize``.

    Parameters
    ----------
    size
        An int: the shorter side becomes ``size`` and the longer
        ``int(size * longer / shorter)``, torchvision's rounding. A ``(height, width)``
        tuple: exactly that size.
    interpolation
        OpenCV interpolation flag (``cv2.INTER_LINEAR`` by default).
    """

    def __init__(self, size: int | tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> None:
        self.size: int | tuple[int, int] = (
            _positive(size, "Resize size") if isinstance(size, int) else _pair(size, "Resize size")
        )
        self.interpolation = _check_interpolation(interpolation)

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The ``(height, width)`` an image of ``size`` (``(height, width)``) is resized to;
        with an int ``size`` and an unknown input, None."""
        if isinstance(self.size, tuple):
            return self.size
        if size is None:
            return None
        return self._out(width=size[1], height=size[0])

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return dtype

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Resize ``img``; ``rng`` is not drawn from. An image already that size is returned."""
        return self._resize(img, self._out(img.shape[1], img.shape[0]))

    def plan_decode(self, width: int, height: int, rng: np.random.Generator) -> DecodePlan:
        """Decode the whole image, reduced as far as it still holds the output size."""
        out = self._out(width, height)
        return DecodePlan(_largest_reduce(width, height, out), None, partial(self._resize, out=out))

    def _out(self, width: int, height: int) -> tuple[int, int]:
        if isinstance(self.size, tuple):
            return self.size
        if width <= height:
            return int(self.size * height / width), self.size
        return self.size, int(self.size * width / height)

    def _resize(self, img: np.ndarray, out: tuple[int, int]) -> np.ndarray:
        if img.shape[:2] == out:
            return img
        return cv2.resize(img, (out[1], out[0]), interpolation=self.interpolation)

    def __repr__(self) -> str:
        return f"Resize(size={self.size}, interpolation={_INTERPOLATIONS[self.interpolation]})"


class CenterCrop:
    """Crop the centre: torchvision's ``CenterCrop``, zero-padding images that are too small.

    Parameters
    ----------
    size
        Output size: an int for a square, or ``(height, width)``. The crop starts at
        ``int(round((H - height) / 2))`` (Python's half-to-even rounding, as torchvision).
    """

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = _pair(size, "CenterCrop size")

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Crop ``img`` (a view of it where it is large enough); ``rng`` is not drawn from."""
        crop_h, crop_w = self.size
        height, width = img.shape[:2]
        if crop_h > height or crop_w > width:
            pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
            img = cv2.copyMakeBorder(
                img,
                pad_h // 2,
                (pad_h + 1) // 2,
                pad_w // 2,
                (pad_w + 1) // 2,
                cv2.BORDER_CONSTANT,
                value=0,
            )
            height, width = img.shape[:2]
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return img[top : top + crop_h, left : left + crop_w]

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return self.size

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return dtype

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


def _largest_reduce(width: int, height: int, out: tuple[int, int]) -> int:
    """The largest DCT reduction that keeps a ``width`` x ``height`` area at least ``out``."""
    out_h, out_w = out
    return max((r for r in REDUCE_FACTORS if width / r >= out_w and height / r >= out_h), default=1)


def _window(box: tuple[int, int, int, int], reduce: int) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the crop ``box`` in the image reduced by ``reduce``:
    reduced pixel i covers full pixels [i*reduce, (i+1)*reduce), so the box edges map to
    edges / reduce, rounded half up to the nearest reduced pixel edge."""
    top, left, h, w = box
    return (
        _round_div(top, reduce),
        _round_div(top + h, reduce),
        _round_div(left, reduce),
        _round_div(left + w, reduce),
    )


def _round_div(x: int, d: int) -> int:
    """``x / d`` rounded half up, in integers."""
    return (2 * x + d) // (2 * d)


def _positive(value: int, what: str) -> int:
    if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ConfigError(f"{what}={value!r} must be a positive integer")
    return int(value)


def _pair(size: int | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        return _positive(int(size), what), _positive(int(size), what)
    if isinstance(size, Sequence) and len(size) == 2:
        return _positive(size[0], what), _positive(size[1], what)
    raise ConfigError(f"{what}={size!r} must be an int or a (height, width) pair")


def _check_interpolation(flag: int) -> int:
    if flag not in _INTERPOLATIONS:
        raise ConfigError(
            f"interpolation={flag!r} is not an OpenCV resize flag; use one of "
            + ", ".join(f"cv2.{n}" for n in _INTERPOLATIONS.values())
        )
    return flag

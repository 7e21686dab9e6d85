"""Photometric transforms: colour jitter, PCA lighting noise, normalisation.

Each keeps the image's size; all but :class:`Normalize` (``float32`` out) keep ``uint8``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from ..errors import ConfigError
from ..imaging.imagenet import IMAGENET_EIGVAL, IMAGENET_EIGVEC, IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ColorJitter", "Lighting", "Normalize"]


class ColorJitter:
    """Random brightness, contrast, saturation and hue: torchvision's ``ColorJitter``.

    Each of the four is a blend with a reference image by a random factor: brightness with
    black, contrast with the mean grey level, saturation with the greyscale image (ITU-R 601
    weights); hue rotates the HSV hue. They are applied in a random order. The work is done in
    float32, clipped to 0..255 after each step and rounded once at the end, so results can
    differ from torchvision's (which rounds after each step on uint8 tensors) by a level or two.

    Parameters
    ----------
    brightness, contrast, saturation
        A number ``x >= 0``: the factor is drawn uniformly from ``[max(0, 1 - x), 1 + x]``;
        or a ``(min, max)`` range of factors. 0 (the default) leaves that property alone.
    hue
        A number ``0 <= h <= 0.5``: the shift, in turns of the colour wheel, is drawn
        uniformly from ``[-h, h]``; or a ``(min, max)`` range within ``[-0.5, 0.5]``.

    Notes
    -----
    Draws per call, as torchvision: ``rng.permutation(4)`` (the order), then one ``uniform``
    for each of brightness, contrast, saturation and hue that is enabled, in that order.
    """

    def __init__(
        self,
        brightness: float | tuple[float, float] = 0,
        contrast: float | tuple[float, float] = 0,
        saturation: float | tuple[float, float] = 0,
        hue: float | tuple[float, float] = 0,
    ) -> None:
        self.brightness = _jitter_range(brightness, "brightness", 1.0, (0.0, math.inf))
        self.contrast = _jitter_range(contrast, "contrast", 1.0, (0.0, math.inf))
        self.saturation = _jitter_range(saturation, "saturation", 1.0, (0.0, math.inf))
        self.hue = _jitter_range(hue, "hue", 0.0, (-0.5, 0.5))

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Jitter the RGB ``uint8`` image ``img``; returns a new ``uint8`` array."""
        order = rng.permutation(4)
        ranges = (self.brightness, self.contrast, self.saturation, self.hue)
        factors = [None if r is None else rng.uniform(r[0], r[1]) for r in ranges]
        x: np.ndarray = img.astype(np.float32)
        for i in order:
            factor = factors[i]
            if factor is None:
                continue
            if i == 0:
                x *= factor
            elif i == 1:
                x = _blend(x, float(_grey(x).mean()), factor)
            elif i == 2:
                x = _blend(x, _grey(x)[..., None], factor)
            else:
                hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
                hsv[..., 0] = (hsv[..., 0] + np.float32(factor * 360.0)) % 360.0
                x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
            np.clip(x, 0.0, 255.0, out=x)
        return _to_uint8(x)

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return size

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return dtype

    def __repr__(self) -> str:
        return (
            f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, "
            f"saturation={self.saturation}, hue={self.hue})"
        )


class Lighting:
    """AlexNet-style PCA lighting noise, as fb.resnet.torch (and tensorpack's loaders) apply it.

    Each call draws ``alpha ~ N(0, alphastd)`` per principal component and adds
    ``eigvec @ (alpha * eigval)``, scaled to 0..255, to every pixel; the result is clipped and
    rounded to ``uint8``.

    Parameters
    ----------
    alphastd
        Standard deviation of the component weights; 0 returns images unchanged without a draw.
    eigval
        Eigenvalues of the RGB covariance for images on the 0..1 scale (as fb.resnet.torch
        gives them); multiplied by 255 here.
    eigvec
        The matching eigenvectors, as the columns of a 3x3 matrix, rows in RGB order.
    """

    def __init__(
        self,
        alphastd: float = 0.1,
        eigval: Sequence[float] = IMAGENET_EIGVAL,
        eigvec: Sequence[Sequence[float]] = IMAGENET_EIGVEC,
    ) -> None:
        if alphastd < 0:
            raise ConfigError(f"Lighting alphastd={alphastd!r} is negative; use 0 or more")
        self.alphastd = float(alphastd)
        self.eigval = np.asarray(eigval, np.float64)
        self.eigvec = np.asarray(eigvec, np.float64)
        if self.eigval.shape != (3,) or self.eigvec.shape != (3, 3):
            raise ConfigError(
                f"Lighting needs 3 eigenvalues and a 3x3 eigenvector matrix, got shapes "
                f"{self.eigval.shape} and {self.eigvec.shape}"
            )

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add lighting noise to the RGB ``uint8`` image ``img``."""
        if self.alphastd == 0:
            return img
        alpha = rng.normal(0.0, self.alphastd, size=3)
        shift = (self.eigvec @ (alpha * self.eigval) * 255.0).astype(np.float32)
        return _to_uint8(np.clip(img.astype(np.float32) + shift, 0.0, 255.0))

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return size

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return dtype

    def __repr__(self) -> str:
        return f"Lighting(alphastd={self.alphastd:g}, eigval={self.eigval.tolist()})"


class Normalize:
    """``uint8`` HWC -> ``float32`` HWC ``(img / 255 - mean) / std``, torchvision's scale.

    Parameters
    ----------
    mean, std
        Per-channel mean and standard deviation on the 0..1 scale.
    """

    def __init__(
        self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.mean = np.asarray(mean, np.float32)
        self.std = np.asarray(std, np.float32)
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape:
            raise ConfigError(
                f"Normalize mean={list(mean)} and std={list(std)} must be two sequences of "
                "one value per channel"
            )
        if np.any(self.std <= 0):
            raise ConfigError(f"Normalize std={list(std)} has a value <= 0; use positive stds")

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Normalize ``img``; ``rng`` is not drawn from."""
        return (img.astype(np.float32) / np.float32(255.0) - self.mean) / self.std

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return size

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        # docstring inherited
        return np.dtype(np.float32)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


def _grey(x: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)


def _blend(x: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    return x * np.float32(factor) + other * np.float32(1.0 - factor)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.rint(x).astype(np.uint8)


def _jitter_range(
    value: float | tuple[float, float], what: str, center: float, bound: tuple[float, float]
) -> tuple[float, float] | None:
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"ColorJitter {what}={value!r} is negative; use 0 or more")
        lo, hi = center - value, center + value
        if center == 1.0:
            lo = max(lo, 0.0)
    else:
        lo, hi = (float(v) for v in value)
    if not bound[0] <= lo <= hi <= bound[1]:
        raise ConfigError(
            f"ColorJitter {what}={value!r} gives the range [{lo:g}, {hi:g}]; it must be "
            f"increasing and within [{bound[0]:g}, {bound[1]:g}]"
        )
    if lo == hi == center:
        return None
    return float(lo), float(hi)

"""Augmentation of RGB ``uint8`` HWC arrays, with torchvision's parameter semantics.

Each transform is a small object called as ``transform(img, rng)``: every random draw comes from
the ``numpy.random.Generator`` passed in, so a sample's augmentation is a function of that
generator alone (the engine seeds one per record and epoch, see
:func:`seqstore.engine.stream.sample_rng`). Parameters mean what they mean in
``torchvision.transforms``, and the random parameters are drawn by the same algorithms, so
recipes carry over unchanged; images are resized with OpenCV rather than PIL.

:class:`Pipeline` is what the loader calls on each record: it decodes and transforms, and when
its first transform is :class:`RandomResizedCrop` or :class:`Resize` it decodes JPEGs at the
smallest DCT-domain size (1/2, 1/4, 1/8) that still holds the output resolution, and a random
crop decodes only its window. Crop parameters are drawn on the full size either way, so the
random stream and crop statistics do not change.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Protocol

import cv2
import numpy as np

from .decode import REDUCE_FACTORS, _decode_window, decode
from .errors import ConfigError
from .imageinfo import probe

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CenterCrop",
    "ColorJitter",
    "Compose",
    "Lighting",
    "Normalize",
    "Pipeline",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "Transform",
    "decode_only",
    "imagenet_train",
    "imagenet_val",
]

#: Per-channel RGB mean of ImageNet on the 0..1 scale (torchvision's).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
#: Per-channel RGB standard deviation of ImageNet on the 0..1 scale (torchvision's).
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Eigenvalues of ImageNet's RGB covariance, for 0..1 images (fb.resnet.torch).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
#: Eigenvectors (columns) of ImageNet's RGB covariance (fb.resnet.torch).
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

_INTERPOLATIONS = {
    cv2.INTER_NEAREST: "INTER_NEAREST",
    cv2.INTER_LINEAR: "INTER_LINEAR",
    cv2.INTER_CUBIC: "INTER_CUBIC",
    cv2.INTER_AREA: "INTER_AREA",
    cv2.INTER_LANCZOS4: "INTER_LANCZOS4",
    cv2.INTER_LINEAR_EXACT: "INTER_LINEAR_EXACT",
    cv2.INTER_NEAREST_EXACT: "INTER_NEAREST_EXACT",
}
_JPEG_MAGIC = b"\xff\xd8"


class Transform(Protocol):
    """What a transform is: an image and a generator in, an image out."""

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform ``img`` (HWC), drawing any randomness from ``rng``."""
        ...


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

    def _draw_window(
        self, width: int, height: int, rng: np.random.Generator
    ) -> tuple[int, tuple[int, int, int, int]]:
        """The DCT reduction this crop allows, and its window in the reduced image."""
        box = self.get_params(width, height, rng)
        reduce = _largest_reduce(box[3], box[2], self.size)
        return reduce, self._window(box, reduce)

    @staticmethod
    def _window(box: tuple[int, int, int, int], reduce: int) -> tuple[int, int, int, int]:
        """``(top, bottom, left, right)`` of the crop ``box`` in the image reduced by
        ``reduce``: reduced pixel i covers full pixels [i*reduce, (i+1)*reduce), so the box
        edges map to edges / reduce, rounded half up to the nearest reduced pixel edge."""
        top, left, h, w = box
        return (
            _round_div(top, reduce),
            _round_div(top + h, reduce),
            _round_div(left, reduce),
            _round_div(left + w, reduce),
        )

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

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(height, width)`` an image of this size is resized to."""
        if isinstance(self.size, tuple):
            return self.size
        if width <= height:
            return int(self.size * height / width), self.size
        return self.size, int(self.size * width / height)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Resize ``img``; ``rng`` is not drawn from. An image already that size is returned."""
        out_h, out_w = self.output_size(img.shape[1], img.shape[0])
        return self._resize(img, (out_h, out_w))

    def _plan(
        self, width: int, height: int, rng: np.random.Generator
    ) -> tuple[int, Callable[[np.ndarray], np.ndarray]]:
        """The DCT reduction this resize allows, and the resize for the reduced image."""
        out = self.output_size(width, height)
        return _largest_reduce(width, height, out), partial(self._resize, out=out)

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

    def __repr__(self) -> str:
        return f"CenterCrop(size={self.size})"


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

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Compose:
    """Apply transforms one after another.

    Parameters
    ----------
    transforms
        The transforms, in order; each draws from the same generator.
    """

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply each transform to the output of the one before."""
        for t in self.transforms:
            img = t(img, rng)
        return img

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)!r})"


class Pipeline:
    """Decode and transform one record: what the loader calls on each sample.

    When the first transform is :class:`RandomResizedCrop` or :class:`Resize` and the image is
    a JPEG, the image is decoded at the smallest of 1, 1/2, 1/4 and 1/8 of its size that
    leaves the crop at least as large as the output, so no output resolution is lost and the
    decoder skips most of its work; for :class:`RandomResizedCrop` only the crop's window is
    decoded (:func:`seqstore.decode.decode_window`). The crop box is drawn on the full size
    (read from the header) either way, so the random draws are the same as with a full-size
    decode. Other
    formats, other first transforms and ``exif_orientation=True`` (the rotated size is not
    known before decoding) decode at full size.

    Parameters
    ----------
    transforms
        The transforms, in order. :class:`Compose` objects are flattened into the list.
    exif_orientation
        Apply EXIF orientation tags when decoding (see :mod:`seqstore.decode`).
    """

    def __init__(
        self, transforms: Sequence[Transform] = (), *, exif_orientation: bool = False
    ) -> None:
        self.transforms = tuple(_flatten(transforms))
        self.exif_orientation = exif_orientation

    def __call__(
        self, data: bytes | memoryview, rng: np.random.Generator, name: str = "<bytes>"
    ) -> np.ndarray:
        """Decode the encoded image ``data`` and apply the transforms.

        Parameters
        ----------
        data
            The encoded file, whole.
        rng
            The record's generator; every random draw comes from it.
        name
            What to call the image in an error message (its file name or key).

        Returns
        -------
        numpy.ndarray
            The transformed image: HWC ``uint8`` RGB unless a transform (:class:`Normalize`)
            changes the type; possibly a view of a larger array.

        Raises
        ------
        seqstore.errors.BadImageError
            ``data`` is not a decodable image.
        """
        first = self.transforms[0] if self.transforms else None
        if (
            isinstance(first, (RandomResizedCrop, Resize))
            and not self.exif_orientation
            and bytes(data[:2]) == _JPEG_MAGIC
        ):
            info = probe(data, name)
            if isinstance(first, RandomResizedCrop):
                # Decode only the window the crop keeps, at the smallest size that holds it.
                reduce, window = first._draw_window(info.width, info.height, rng)
                img = first._resize(_decode_window(data, window, reduce, name))  # probed
            else:
                reduce, finish = first._plan(info.width, info.height, rng)
                img = finish(decode(data, reduce=reduce, name=name))
            rest = self.transforms[1:]
        else:
            img = decode(data, exif_orientation=self.exif_orientation, name=name)
            rest = self.transforms
        for t in rest:
            img = t(img, rng)
        return img

    @property
    def output_size(self) -> tuple[int, int] | None:
        """The ``(height, width)`` of every output, or None where it depends on the image."""
        size: tuple[int, int] | None = None
        for t in self.transforms:
            if isinstance(t, (RandomResizedCrop, CenterCrop)):
                size = t.size
            elif isinstance(t, Resize):
                size = t.size if isinstance(t.size, tuple) else None
            elif not isinstance(t, (RandomHorizontalFlip, ColorJitter, Lighting, Normalize)):
                size = None
        return size

    def __repr__(self) -> str:
        return f"Pipeline({list(self.transforms)!r}, exif_orientation={self.exif_orientation})"


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


def _flatten(transforms: Iterable[Transform]) -> Iterable[Transform]:
    for t in transforms:
        if isinstance(t, Compose):
            yield from _flatten(t.transforms)
        else:
            yield t


def _largest_reduce(width: int, height: int, out: tuple[int, int]) -> int:
    """The largest DCT reduction that keeps a ``width`` x ``height`` area at least ``out``."""
    out_h, out_w = out
    return max((r for r in REDUCE_FACTORS if width / r >= out_w and height / r >= out_h), default=1)


def _round_div(x: int, d: int) -> int:
    """``x / d`` rounded half up, in integers."""
    return (2 * x + d) // (2 * d)


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

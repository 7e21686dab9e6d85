"""The transform protocol, and the Pipeline that decodes a record and applies transforms.

A transform is any object with ``__call__(img, rng)``, ``output_size(size)`` and
``output_dtype(dtype)``; it may also offer ``plan_decode(width, height, rng)`` to say how much
of a JPEG it needs. :class:`Pipeline` reads only these, never a transform's class, so a new
transform (yours or seqstore's) keeps the loader's fixed-size batch ring and reduced decoding
without a change here. A plain function ``f(img, rng)`` works too: its output size and dtype
are taken as unknown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..imaging.decode import decode, decode_window, is_jpeg
from ..imaging.header import probe

__all__ = ["Compose", "DecodePlan", "Pipeline", "Transform", "TransformFn"]

#: A bare transform function: an image and a generator in, an image out.
TransformFn = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class DecodePlan:
    """How much of a JPEG a transform needs, from :meth:`Transform.plan_decode`.

    Attributes
    ----------
    reduce : int
        Decode at ``1/reduce`` of the full size (one of
        :data:`seqstore.imaging.decode.REDUCE_FACTORS`).
    window : tuple of 4 int or None
        ``(top, bottom, left, right)`` in the reduced image: decode only this window
        (:func:`seqstore.imaging.decode.decode_window`); None decodes the whole reduced image.
    finish : callable
        Turns the reduced (windowed) decode into the transform's output, drawing nothing
        more from the generator.
    """

    reduce: int
    window: tuple[int, int, int, int] | None
    finish: Callable[[np.ndarray], np.ndarray]


class Transform(Protocol):
    """What a transform declares.

    Optionally, a transform that is first in a :class:`Pipeline` can also define
    ``plan_decode(width, height, rng) -> DecodePlan``: given the full size of a JPEG (read
    from its header), draw exactly what ``__call__`` would draw and return how much of the
    image to decode and how to finish; the pipeline then decodes only that.
    """

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Transform ``img`` (HWC), drawing any randomness from ``rng``."""
        ...

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The ``(height, width)`` of the output for an input of ``size`` (None: unknown);
        None where it is not known."""
        ...

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        """The dtype of the output for an input of ``dtype``."""
        ...


def fold_size(
    transforms: Iterable[Transform | TransformFn], size: tuple[int, int] | None
) -> tuple[int, int] | None:
    """The output size of ``transforms`` applied in turn to an input of ``size``."""
    for t in transforms:
        declared = getattr(t, "output_size", None)
        size = declared(size) if declared is not None else None
    return size


def fold_dtype(
    transforms: Iterable[Transform | TransformFn], dtype: np.dtype[Any] | None
) -> np.dtype[Any] | None:
    """The output dtype of ``transforms`` applied in turn to ``dtype``; None if unknown."""
    for t in transforms:
        declared = getattr(t, "output_dtype", None)
        if declared is None or dtype is None:
            return None
        dtype = np.dtype(declared(dtype))
    return dtype


class Compose:
    """Apply transforms one after another.

    Parameters
    ----------
    transforms
        The transforms, in order; each draws from the same generator.
    """

    def __init__(self, transforms: Iterable[Transform | TransformFn]) -> None:
        self.transforms = tuple(transforms)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Apply each transform to the output of the one before."""
        for t in self.transforms:
            img = t(img, rng)
        return img

    def output_size(self, size: tuple[int, int] | None) -> tuple[int, int] | None:
        # docstring inherited
        return fold_size(self.transforms, size)

    def output_dtype(self, dtype: np.dtype[Any]) -> np.dtype[Any]:
        """The dtype after every transform; ``object`` where one does not declare it."""
        out = fold_dtype(self.transforms, dtype)
        return out if out is not None else np.dtype(object)

    def __repr__(self) -> str:
        return f"Compose({list(self.transforms)!r})"


class Pipeline:
    """Decode and transform one record: what the loader calls on each sample.

    When the first transform has ``plan_decode`` (:class:`~seqstore.transforms.Resize` and
    :class:`~seqstore.transforms.RandomResizedCrop` do) and the image is a JPEG, the image is
    decoded at the smallest of 1, 1/2, 1/4 and 1/8 of its size that leaves the transform's
    output at full resolution, and, where the plan names a window (a random crop), only that
    window is decoded (:func:`seqstore.imaging.decode.decode_window`). The plan is drawn on the full
    size (read from the header), so the random draws are the same as with a full-size
    decode. Other formats, first transforms without ``plan_decode`` and
    ``exif_orientation=True`` (the rotated size is not known before decoding) decode at full
    size.

    Parameters
    ----------
    transforms
        The transforms, in order. :class:`Compose` objects are flattened into the list.
    exif_orientation
        Apply EXIF orientation tags when decoding (see :mod:`seqstore.imaging.decode`).
    """

    def __init__(
        self, transforms: Sequence[Transform | TransformFn] = (), *, exif_orientation: bool = False
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
            The transformed image: HWC ``uint8`` RGB unless a transform changes the type (see
            :attr:`output_dtype`); possibly a view of a larger array.

        Raises
        ------
        seqstore.errors.BadImageError
            ``data`` is not a decodable image.
        """
        first = self.transforms[0] if self.transforms else None
        plan_decode = getattr(first, "plan_decode", None)
        if plan_decode is not None and not self.exif_orientation and is_jpeg(data):
            info = probe(data, name)
            plan: DecodePlan = plan_decode(info.width, info.height, rng)
            if plan.window is None:
                img = decode(data, reduce=plan.reduce, name=name)
            else:
                img = decode_window(data, plan.window, reduce=plan.reduce, name=name, probed=True)
            img = plan.finish(img)
            rest = self.transforms[1:]
        else:
            img = decode(data, exif_orientation=self.exif_orientation, name=name)
            rest = self.transforms
        for t in rest:
            img = t(img, rng)
        return img

    @property
    def output_size(self) -> tuple[int, int] | None:
        """The ``(height, width)`` of every output, or None where it depends on the image
        (or a transform does not declare it)."""
        return fold_size(self.transforms, None)

    @property
    def output_dtype(self) -> np.dtype[Any] | None:
        """The dtype of every output (decoding gives ``uint8``), or None where a transform
        does not declare it."""
        return fold_dtype(self.transforms, np.dtype(np.uint8))

    def __repr__(self) -> str:
        return f"Pipeline({list(self.transforms)!r}, exif_orientation={self.exif_orientation})"


def _flatten(
    transforms: Iterable[Transform | TransformFn],
) -> Iterable[Transform | TransformFn]:
    for t in transforms:
        if isinstance(t, Compose):
            yield from _flatten(t.transforms)
        else:
            yield t

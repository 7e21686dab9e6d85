"""Batches on their way from a loader worker to the training loop.

This is the Loader's transport room: collation of a worker's samples (:func:`collate`), the
ring of shared-memory buffers that carries same-shaped uint8 batches between processes
(:class:`Ring`), and the joining of a split batch's parts (:func:`join`). Delivery to the
device is :mod:`seqstore.pytorch.delivery`'s.

The ring exists because creating a fresh shared-memory segment per batch and faulting its
pages in cost more than the copy itself (about 7 ms per 64 images of 224x224, 8% of a
worker's time on 2 cores). On the CPU the training loop gets the ring buffer itself, lent
(:meth:`Ring.lease`): the buffer goes back to its worker when the batch and every view of
it are gone, so a batch a user keeps is never overwritten, and no time goes on copying it
(38 MB per float32 batch). For a GPU the main process copies the batch out to the device
and hands the buffer back at once.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data._utils.collate import collate as _collate
from torch.utils.data._utils.collate import default_collate_fn_map

from ..engine.stream import RawBatch
from ..errors import ConfigError
from .sharing import HAVE_MEMFD, Segment, Shipped, ShippedArrays

__all__ = [
    "Affine",
    "Ring",
    "Samples",
    "Slot",
    "collate",
    "join",
    "normalizing_affine",
    "shared_memory_error",
]


@dataclass(frozen=True)
class Slot:
    """Samples a worker left in the ring: rows ``[offset, offset + size)`` of buffer
    ``slot``."""

    slot: int
    offset: int
    size: int


class Samples(list[Any]):
    """A part's samples as they are, one per record (bytes, or arrays of their own
    sizes): joined to the other parts of their batch by concatenation."""


# The states of a ring buffer (a split batch's buffer is never marked filled: see acquire).
_FREE, _FILLED, _LENT = 0, 1, 2


class _Lent(np.ndarray):
    """A ring buffer's batch lent to the training loop: when the last tensor or array that
    views it is gone, numpy collects this array, which hands the buffer back."""

    _busy: np.ndarray | None = None
    _at: int = 0

    def __del__(self) -> None:
        if self._busy is not None:  # not in the views numpy derives from it
            self._busy[self._at] = _FREE


def shared_memory_error(nbytes: int, exc: BaseException) -> ConfigError:
    """One line for shared memory that could not be had: /dev/shm's size (Docker's default
    is 64 MB), what the Loader asked for, and the ways out."""
    try:
        st = os.statvfs("/dev/shm")
        room = f"/dev/shm holds {st.f_blocks * st.f_frsize / 1e6:.0f} MB, "
        room += f"{st.f_bavail * st.f_frsize / 1e6:.0f} MB free"
    except OSError:
        room = "/dev/shm is not there"
    return ConfigError(
        f"the Loader's workers need {nbytes / 1e6:.0f} MB of shared memory more and cannot have "
        f"it ({room}; {str(exc).splitlines()[0]}): give the container more (docker run "
        "--shm-size=2g, or a larger tmpfs on /dev/shm), or lower batch_size or num_workers, "
        "or take dtype='uint8' batches, a quarter of float32's, or num_workers=0"
    )


class Ring:
    """Shared-memory batch buffers, reused from batch to batch, for samples of one shape and
    dtype.

    A worker that makes a whole batch writes it into the first free buffer of its own
    (every ``workers``-th); split batches go into buffer ``b % slots`` for batch ``b``,
    each worker writing its part's rows (:func:`~seqstore.engine.shares.part_bounds`) there
    if the buffer is free (:meth:`acquire`). The worker sends a :class:`Slot`; the main
    process lends the batch to the training loop (:meth:`lease`), or copies it out and
    frees the buffer (:meth:`release`). The DataLoader hands a worker its next task as soon
    as the main process takes an item from it, and the Loader keeps ``prefetch_factor *
    workers`` batches ahead in all (``prefetch_factor`` whole batches per worker, or as
    many samples in split parts, a ``workers``-th of a batch each): so when a worker starts
    batch ``b``, every batch before ``b - prefetch_factor * workers`` has reached the
    training loop, which holds one batch while it waits for the next.
    ``workers * (prefetch_factor + 2)`` buffers, at least ``prefetch_factor * workers + 2``,
    are therefore free when needed.
    A loop that keeps more batches makes a worker find its buffer lent; its samples then go
    in shared memory of their own, as without a ring. That is about the shared memory that
    batches in flight take anyway, reserved once when the loader is made.

    Parameters
    ----------
    slots
        Buffers.
    batch_size
        Samples per buffer.
    shape
        Shape of one sample (HWC for the built-in pipelines).
    dtype
        Type of the samples' elements.
    workers
        Worker processes (whole batches: each has every ``workers``-th buffer).
    """

    def __init__(
        self,
        slots: int,
        batch_size: int,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.uint8,
        workers: int = 1,
    ):
        self.workers = workers
        self.shape = shape
        self.dtype = dtype
        self._size = (slots, batch_size, *shape)
        nbytes = math.prod(self._size) * dtype.itemsize
        self._segment: Segment | None = None
        try:
            if HAVE_MEMFD:
                # One segment outside /dev/shm: the buffers, then the busy flags.
                self._segment = Segment(nbytes + slots)
                self._view()
                return
            # A new shared segment, as torch.multiprocessing makes them: no copy into it,
            # which share_memory_() of a fresh tensor would make (twice as slow).
            storage = torch.UntypedStorage._new_shared(nbytes)
            self.buffers = torch.empty(0, dtype=dtype).set_(storage).view(self._size)
            self.busy = torch.zeros(slots, dtype=torch.uint8).share_memory_()
        except (RuntimeError, OSError) as exc:
            raise shared_memory_error(nbytes, exc) from None

    def _view(self) -> None:
        """The buffers and busy flags over the segment."""
        assert self._segment is not None
        nbytes = math.prod(self._size) * self.dtype.itemsize
        self.buffers = self._segment.tensor(self._size, self.dtype)
        self.busy = self._segment.tensor((self._size[0],), torch.uint8, offset=nbytes)

    def __getstate__(self) -> dict[str, Any]:
        # To a worker that spawn or forkserver starts: the segment, which it maps.
        if self._segment is None:
            return self.__dict__
        return {k: v for k, v in self.__dict__.items() if k not in ("buffers", "busy")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._segment is not None:
            self._view()

    @property
    def slots(self) -> int:
        """Buffers in the ring."""
        return len(self.busy)

    def acquire(self, batch: int, worker: int, split: bool) -> int | None:
        """A free buffer for rank-local batch ``batch``: with ``split``, the one of that
        batch, which every worker writes its part into; else the first free one of
        ``worker``'s own (every ``workers``-th), so that a worker reuses few buffers. None
        if the training loop holds it (them)."""
        busy = self.busy.numpy()
        if split:
            # Every worker writes its rows before the main process takes the batch, so none
            # may mark it; none writes batch b + slots before b has been taken (see above).
            slot = batch % self.slots
            return slot if busy[slot] == _FREE else None
        free = np.flatnonzero(busy[worker :: self.workers] == _FREE)
        if not free.size:
            return None
        slot = int(worker + free[0] * self.workers)
        busy[slot] = _FILLED
        return slot

    def reset(self, worker: int) -> None:
        """Free ``worker``'s filled buffers at the start of an epoch of whole batches: the
        batches of an epoch broken off that the main process dropped. Lent ones stay lent."""
        busy = self.busy.numpy()[worker :: self.workers]
        busy[busy == _FILLED] = _FREE

    def view(self, slot: Slot) -> torch.Tensor:
        """The samples in ``slot``, NHWC, a view of the shared buffer."""
        return self.buffers[slot.slot, slot.offset : slot.offset + slot.size]

    def release(self, slot: Slot) -> None:
        """Hand ``slot``'s buffer back to the workers."""
        self.busy[slot.slot] = _FREE

    def lease(self, slot: Slot) -> torch.Tensor:
        """The batch in ``slot``, NHWC, lent: the buffer goes back to the workers once the
        tensor and every view of it are gone."""
        lent = self.view(slot).numpy().view(_Lent)
        lent._busy = self.busy.numpy()
        lent._at = slot.slot
        lent._busy[slot.slot] = _LENT
        return torch.from_numpy(lent)


def _same(samples: list[Any], shape: tuple[int, ...], dtype: torch.dtype) -> bool:
    """Whether every sample is an array or tensor of ``shape`` and ``dtype``."""
    if not samples:
        return False
    for s in samples:
        if isinstance(s, np.ndarray):
            if s.shape != shape or torch.from_numpy(s[:0]).dtype != dtype:
                return False
        elif not (isinstance(s, torch.Tensor) and s.shape == shape and s.dtype == dtype):
            return False
    return True


def _stack(samples: list[Any], out: torch.Tensor) -> None:
    if isinstance(samples[0], torch.Tensor):
        torch.stack(samples, out=out)
    else:
        np.stack(samples, out=out.numpy())


@dataclass(frozen=True)
class Affine:
    """The per-channel ``x * scale + shift`` that normalises uint8 HWC pixels into float32,
    and the layout it writes: ``planar``, CHW per sample (a contiguous NCHW batch, which the
    training loop gets as it is), else HWC (a channels-last batch)."""

    scale: tuple[float, ...]
    shift: tuple[float, ...]
    planar: bool = False

    def shape(self, hwc: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of a normalised sample of the HWC shape ``hwc``."""
        return (hwc[2], hwc[0], hwc[1]) if self.planar else hwc


def _stack_normalized(samples: list[np.ndarray], out: np.ndarray, affine: Affine) -> None:
    """uint8 HWC samples into the float32 batch ``out``, normalised, in place and in one pass
    per sample: OpenCV's arithmetic, 4x numpy's, whose loops over a last axis of 3 are slow.
    Planar: each channel's plane through ``addWeighted`` (0.035 ms per 224x224 image), which
    also spares the main process a 38 MB transposing copy per batch."""
    scale, shift = affine.scale, affine.shift
    for i, sample in enumerate(samples):
        if affine.planar:
            for c, plane in enumerate(cv2.split(sample)):
                cv2.addWeighted(
                    plane, scale[c], plane, 0.0, shift[c], dst=out[i, c], dtype=cv2.CV_32F
                )
        else:
            # A tuple is OpenCV's per-channel scalar, which its stubs do not list.
            pad = (0.0,) * (4 - len(scale))
            cv2.multiply(sample, scale + pad, dst=out[i], dtype=cv2.CV_32F)  # type: ignore[call-overload, unused-ignore]
            cv2.add(out[i], shift + pad, dst=out[i])  # type: ignore[call-overload, unused-ignore]


def _uint8_images(samples: list[Any]) -> list[np.ndarray] | None:
    """``samples`` if they are uint8 HWC arrays of one shape (a built-in pipeline's)."""
    first = samples[0] if samples else None
    if (
        isinstance(first, np.ndarray)
        and first.dtype == np.uint8
        and first.ndim == 3
        and all(isinstance(s, np.ndarray) and s.shape == first.shape for s in samples)
    ):
        return samples
    return None


def _stack_shipped(batch: Sequence[torch.Tensor], *, collate_fn_map: Any = None) -> Shipped:
    """default_collate's stacking of one field's tensors, into a :class:`Shipped` tensor."""
    shipped = Shipped((len(batch), *batch[0].shape), batch[0].dtype)
    torch.stack(list(batch), out=shipped.tensor)
    return shipped


# default_collate, each field's tensors stacked outside /dev/shm (numpy arrays too).
_SHIPPED = {**default_collate_fn_map, torch.Tensor: _stack_shipped}


def collate(
    raw: RawBatch,
    ring: Ring | None,
    worker: int | None,
    affine: Affine | None = None,
    split: bool = False,
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A worker's batch: images (a :class:`Slot`, a tensor, or a list) and numpy labels and
    indices, which pickle by value instead of each taking a shared-memory segment.

    Samples of the ring's shape and dtype go into a ring buffer. With ``affine``, uint8 HWC
    samples are normalised into a float32 batch on the way (see :func:`normalizing_affine`).
    ``worker`` is None in the main process (``num_workers=0``), where nothing needs to be
    shared. ``split``: ``raw`` is one worker's part of a batch (see :meth:`Ring.acquire`).
    """
    samples = raw.samples
    images = _uint8_images(samples)
    if ring is not None and worker is not None and samples:
        if images is not None and affine is not None:
            fits = ring.dtype == torch.float32 and affine.shape(images[0].shape) == ring.shape
        else:
            fits = _same(samples, ring.shape, ring.dtype)
        free = ring.acquire(raw.batch, worker, split) if fits else None
        if free is not None:
            slot = Slot(free, raw.offset, len(samples))
            if images is not None and affine is not None:
                _stack_normalized(images, ring.view(slot).numpy(), affine)
            else:
                _stack(samples, ring.view(slot))
            return slot, raw.labels, raw.indices
    if images is None:
        first = samples[0] if samples else None
        if isinstance(first, (bytes, str)) or first is None:
            return Samples(samples), raw.labels, raw.indices
        if isinstance(first, np.ndarray) and any(s.shape != first.shape for s in samples):
            # Images of their own sizes (transform="decode"): nothing to stack.
            if worker is not None and HAVE_MEMFD:
                return ShippedArrays(samples, Samples), raw.labels, raw.indices
            return Samples(torch.from_numpy(s) for s in samples), raw.labels, raw.indices
        if worker is not None and HAVE_MEMFD:
            # default_collate would stack each field's tensors into /dev/shm.
            return _collate(samples, collate_fn_map=_SHIPPED), raw.labels, raw.indices
        return torch.utils.data.default_collate(samples), raw.labels, raw.indices
    # NHWC in one buffer, in shared memory up front when in a worker so that the batch
    # crosses to the main process without another copy.
    shape = (len(images), *(affine.shape(images[0].shape) if affine else images[0].shape))
    dtype = torch.float32 if affine is not None else torch.uint8
    shipped = Shipped(shape, dtype) if worker is not None and HAVE_MEMFD else None
    out = shipped.tensor if shipped is not None else torch.empty(shape, dtype=dtype)
    if worker is not None and shipped is None:
        try:
            out.share_memory_()
        except RuntimeError as exc:
            raise shared_memory_error(out.nbytes, exc) from None
    if affine is not None:
        _stack_normalized(images, out.numpy(), affine)
    else:
        np.stack(images, out=out.numpy())
    return shipped or out, raw.labels, raw.indices


def _cat(parts: list[Any]) -> Any:
    """Collated parts of one batch, joined as collating the whole batch would have made it."""
    first = parts[0]
    if isinstance(first, Samples):
        return [sample for part in parts for sample in part]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, Mapping):
        return {key: _cat([part[key] for part in parts]) for key in first}
    if isinstance(first, (list, tuple)):  # default_collate of sequences: one entry per field
        return type(first)(_cat(list(field)) for field in zip(*parts, strict=True))
    raise TypeError(f"cannot join batch parts of type {type(first).__name__}")


def join(parts: list[Any], ring: Ring | None) -> Any:
    """One batch from its parts (:func:`collate`'s images of each, in worker order): a
    :class:`Slot` of the whole batch when every part lies in place in one ring buffer, else
    the parts joined into new memory (ring buffers they used are released)."""
    if len(parts) == 1:
        return list(parts[0]) if isinstance(parts[0], Samples) else parts[0]
    slots = [p for p in parts if isinstance(p, Slot)]
    if ring is not None and len(slots) == len(parts):
        ends = np.cumsum([p.size for p in slots])
        if len({p.slot for p in slots}) == 1 and [p.offset for p in slots] == [0, *ends[:-1]]:
            return Slot(slots[0].slot, 0, int(ends[-1]))
    if ring is None:
        return _cat(parts)
    joined = _cat([ring.view(p) if isinstance(p, Slot) else p for p in parts])
    for slot in slots:
        ring.release(slot)
    return joined


def normalizing_affine(mean: Sequence[float], std: Sequence[float], planar: bool) -> Affine:
    """The :class:`Affine` of ``(x / 255 - mean) / std``, torchvision's normalisation."""
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    scale, shift = (1 / (255 * s)).astype(np.float32), (-m / s).astype(np.float32)
    return Affine(tuple(map(float, scale)), tuple(map(float, shift)), planar)

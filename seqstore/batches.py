"""Batches on their way from a loader worker to the training loop.

This is the Loader's transport room: collation of a worker's samples (:func:`collate`), the
ring of shared-memory buffers that carries same-shaped uint8 batches between processes
(:class:`Ring`), and delivery in the main process (:class:`Delivery`): NCHW on the device,
converted and normalised in one step there, since uint8 is a quarter of the bytes over
worker IPC and over PCIe.

The ring exists because creating a fresh shared-memory segment per batch and faulting its
pages in cost more than the copy itself (about 7 ms per 64 images of 224x224, 8% of a
worker's time on 2 cores). The main process copies (or converts, or moves to the GPU) each
batch out of the ring before the training loop sees it, and hands the buffer back, so a
batch a user keeps is never overwritten.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch

from .engine.stream import RawBatch

__all__ = ["Affine", "Delivery", "Ring", "Slot", "collate", "normalize", "normalizing_affine"]


@dataclass(frozen=True)
class Slot:
    """A batch a worker left in its ring: which worker, which buffer, how many samples."""

    worker: int
    slot: int
    size: int


class Ring:
    """Shared-memory batch buffers, ``slots`` per worker, reused from batch to batch, for
    samples of one shape and dtype.

    A worker takes a free buffer (:meth:`acquire`), fills it and sends a :class:`Slot`; the
    main process reads the batch out and frees the buffer (:meth:`release`). The DataLoader
    hands a worker its next task as soon as the main process takes a batch from it, so a
    worker has at most ``prefetch_factor`` batches in flight plus the one being read out:
    ``prefetch_factor + 1`` buffers keep it from ever waiting. That is about the shared
    memory that batches in flight take anyway, reserved once when the loader is made.

    Parameters
    ----------
    workers, slots
        Worker processes, and buffers for each.
    batch_size
        Samples per buffer.
    shape
        Shape of one sample (HWC for the built-in pipelines).
    dtype
        Type of the samples' elements.
    """

    def __init__(
        self,
        workers: int,
        slots: int,
        batch_size: int,
        shape: tuple[int, ...],
        dtype: torch.dtype = torch.uint8,
    ):
        self.shape = shape
        self.dtype = dtype
        size = (workers, slots, batch_size, *shape)
        try:
            # A new shared segment, as torch.multiprocessing makes them: no copy into it,
            # which share_memory_() of a fresh tensor would make (twice as slow).
            nbytes = math.prod(size) * dtype.itemsize
            storage = torch.UntypedStorage._new_shared(nbytes)
            self.buffers = torch.empty(0, dtype=dtype).set_(storage).view(size)
        except AttributeError:  # a torch without it
            self.buffers = torch.empty(size, dtype=dtype).share_memory_()
        self.busy = torch.zeros((workers, slots), dtype=torch.uint8).share_memory_()

    def reset(self, worker: int) -> None:
        """Free all of ``worker``'s buffers: at the start of an epoch nothing else holds them
        (a batch is copied out before the training loop sees it)."""
        self.busy[worker] = 0

    def acquire(self, worker: int) -> int:
        """A free buffer of ``worker``, marked busy; waits for the main process if none is."""
        busy = self.busy[worker].numpy()
        while True:
            free = np.flatnonzero(busy == 0)
            if free.size:
                busy[free[0]] = 1
                return int(free[0])
            time.sleep(0.0005)

    def view(self, slot: Slot) -> torch.Tensor:
        """The batch in ``slot``, NHWC, a view of the shared buffer."""
        return self.buffers[slot.worker, slot.slot, : slot.size]

    def release(self, slot: Slot) -> None:
        """Hand ``slot``'s buffer back to its worker."""
        self.busy[slot.worker, slot.slot] = 0


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


def _stack_normalized(samples: list[np.ndarray], out: np.ndarray, affine: Affine) -> None:
    """uint8 samples into float32 ``out``, each ``x * scale + shift`` per channel: OpenCV's
    arithmetic, 4x numpy's, whose loops over a last axis of 3 are slow; written in place,
    with no temporaries."""
    scale, shift = (tuple(float(v) for v in a) + (0.0,) * (4 - len(a)) for a in affine)
    for i, sample in enumerate(samples):
        # A tuple is OpenCV's per-channel scalar, which its stubs do not list.
        cv2.multiply(sample, scale, dst=out[i], dtype=cv2.CV_32F)  # type: ignore[call-overload]
        cv2.add(out[i], shift, dst=out[i])  # type: ignore[call-overload]


#: Per-channel ``(scale, shift)`` that normalises uint8 pixels: ``x * scale + shift``.
Affine = tuple[np.ndarray, np.ndarray]


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


def collate(
    raw: RawBatch, ring: Ring | None, worker: int | None, affine: Affine | None = None
) -> tuple[Any, np.ndarray, np.ndarray]:
    """A worker's batch: images (a :class:`Slot`, a tensor, or a list) and numpy labels and
    indices, which pickle by value instead of each taking a shared-memory segment.

    Samples of the ring's shape and dtype go into a ring buffer. With ``affine``, uint8 HWC
    samples are normalised into a float32 batch on the way (see :func:`normalizing_affine`).
    ``worker`` is None in the main process (``num_workers=0``), where nothing needs to be
    shared.
    """
    samples = raw.samples
    images = _uint8_images(samples)
    normalizing = affine is not None and images is not None
    if ring is not None and worker is not None and samples:
        if normalizing and images is not None and affine is not None:
            fits = ring.dtype == torch.float32 and images[0].shape == ring.shape
        else:
            fits = _same(samples, ring.shape, ring.dtype)
        if fits:
            slot = Slot(worker, ring.acquire(worker), len(samples))
            if images is not None and affine is not None:
                _stack_normalized(images, ring.view(slot).numpy(), affine)
            else:
                _stack(samples, ring.view(slot))
            return slot, raw.labels, raw.indices
    if images is None:
        first = samples[0] if samples else None
        if isinstance(first, (bytes, str)) or first is None:
            return samples, raw.labels, raw.indices
        if isinstance(first, np.ndarray) and any(s.shape != first.shape for s in samples):
            # Images of their own sizes (transform="decode"): nothing to stack.
            return [torch.from_numpy(s) for s in samples], raw.labels, raw.indices
        return torch.utils.data.default_collate(samples), raw.labels, raw.indices
    # NHWC in one buffer, in shared memory up front when in a worker so that the batch
    # crosses to the main process without another copy.
    shape = (len(images), *images[0].shape)
    out = torch.empty(shape, dtype=torch.float32 if affine is not None else torch.uint8)
    if worker is not None:
        out.share_memory_()
    if affine is not None:
        _stack_normalized(images, out.numpy(), affine)
    else:
        np.stack(images, out=out.numpy())
    return out, raw.labels, raw.indices


def normalizing_affine(mean: Sequence[float], std: Sequence[float]) -> Affine:
    """The :data:`Affine` of ``(x / 255 - mean) / std``, torchvision's normalisation."""
    m = np.asarray(mean, np.float32)
    s = np.asarray(std, np.float32)
    return (1 / (255 * s)).astype(np.float32), (-m / s).astype(np.float32)


def _detach(images: torch.Tensor) -> torch.Tensor:
    """A copy of a ring buffer's view in memory of its own, with the same strides. numpy's
    copy, single-threaded, since torch's would wake its thread pool, which then spins
    against the workers."""
    return torch.from_numpy(images.numpy().copy(order="K"))


def normalize(
    images: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, layout: torch.memory_format
) -> torch.Tensor:
    """uint8 NCHW -> ``(images - mean) * inv_std`` in ``mean``'s dtype and ``layout``.

    One conversion (dtype and layout together, a new tensor), then two in-place passes, the
    fastest of the orders tried (a promoting ``mul`` or ``addcmul`` is 1.5x slower).
    """
    return images.to(dtype=mean.dtype, memory_format=layout).sub_(mean).mul_(inv_std)


class Delivery:
    """A collated batch -> what the training loop gets: NCHW on the device, in ``dtype``.

    Parameters
    ----------
    device
        Where batches go.
    hwc
        Images come from a built-in pipeline: HWC arrays (uint8, or float after a
        :class:`~seqstore.transforms.Normalize`). Otherwise they are whatever a user
        callable's outputs collate to, and are only moved to the device.
    pin
        Stage ring batches in page-locked memory, so that the copy to a GPU runs async.
    channels_last, dtype, normalize, mean, std
        As in :class:`~seqstore.config.LoaderConfig`.
    """

    def __init__(
        self,
        device: torch.device,
        *,
        hwc: bool,
        pin: bool,
        channels_last: bool,
        dtype: str,
        normalize: bool,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.device = device
        self.hwc = hwc
        self.pin = pin
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.dtype = dtype
        self.normalize = normalize
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def __call__(self, images: Any, labels: torch.Tensor, owned: bool) -> tuple[Any, torch.Tensor]:
        """The batch on the device. ``owned=False``: ``images`` is a view of a ring buffer
        that is reused once this returns, so the result must not share its memory."""
        device, layout = self.device, self.layout
        non_blocking = device.type == "cuda"
        labels = labels.to(device, non_blocking=non_blocking)
        if isinstance(images, list) and self.hwc:  # HWC images of their own sizes
            return [x.permute(2, 0, 1).to(device) for x in images], labels
        if not isinstance(images, torch.Tensor):
            return images, labels
        if not self.hwc or images.ndim != 4:  # a user callable's outputs
            if device.type != "cpu":
                if not owned and self.pin:
                    images = torch.empty_like(images, pin_memory=True).copy_(images)
                return images.to(device, non_blocking=non_blocking and self.pin), labels
            return (images if owned else _detach(images)), labels
        images = images.permute(0, 3, 1, 2)  # NCHW with channels-last strides
        if device.type != "cpu":
            if not owned and self.pin:
                images = torch.empty_like(images, pin_memory=True).copy_(images)
            images = images.to(device, non_blocking=non_blocking and self.pin)
            owned = True  # a copy on the device
        if images.dtype == torch.uint8 and self.dtype != "uint8":
            dtype = getattr(torch, self.dtype)
            if not self.normalize:
                return images.to(dtype=dtype, memory_format=layout), labels
            mean = self.mean.to(device, dtype, non_blocking=non_blocking)
            inv_std = self.inv_std.to(device, dtype, non_blocking=non_blocking)
            return normalize(images, mean, inv_std, layout), labels
        # Already in its dtype: uint8 as asked, or normalised in the workers.
        if not owned and layout == torch.channels_last:
            return _detach(images), labels  # NHWC is channels-last NCHW: one flat copy
        out = images.contiguous(memory_format=layout)
        if not owned and out.data_ptr() == images.data_ptr():  # already in that layout
            out = out.clone(memory_format=layout)
        return out, labels

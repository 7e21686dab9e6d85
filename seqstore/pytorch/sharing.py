"""Memory the Loader shares with its workers, outside /dev/shm.

torch puts every tensor a worker sends, and every tensor it shares, in /dev/shm, which a
container gets 64 MB of by default (Docker): a float32 batch of 256 images of 224x224 alone
is 154 MB. A memfd (``memfd_create(2)``) is anonymous shared memory that no mounted tmpfs
holds, so /dev/shm's size does not bound it; the memory cgroup does, as it does any memory.
It reaches a worker started by fork as a shared mapping the worker inherits, and a worker
started by spawn or forkserver, or the main process receiving a batch, as a file descriptor
passed over a Unix socket by multiprocessing's ``DupFd`` (as torch passes its own). Its
memory goes back to the system when the last process that maps it lets it go: an epoch
broken off leaves nothing behind in /dev/shm.

:class:`Segment` is one such block of memory. :class:`Shipped` is a tensor a worker sends,
in a segment of its own, and :class:`ShippedArrays` arrays of their own shapes, in one.
Where the system has no memfd (not Linux), batches fall back to torch's shared memory.
"""

from __future__ import annotations

import math
import mmap
import os
import weakref
from multiprocessing.reduction import DupFd
from typing import Any

import numpy as np
import torch

__all__ = ["HAVE_MEMFD", "Segment", "Shipped", "ShippedArrays"]

#: Whether this system has memfds (Linux); elsewhere shared memory is torch's.
HAVE_MEMFD = hasattr(os, "memfd_create")


def _map(fd: int, nbytes: int) -> mmap.mmap:
    """``nbytes`` of the memfd ``fd``, mapped shared (at least one byte: mmap refuses 0)."""
    return mmap.mmap(fd, max(nbytes, 1))


class Segment:
    """A block of shared memory that /dev/shm's size does not bound, viewed as tensors.

    Pickled (for a worker that spawn or forkserver starts, or a batch on its way to the main
    process), it travels as a file descriptor, and the other process maps the same memory.

    Parameters
    ----------
    nbytes
        Its size.
    """

    def __init__(self, nbytes: int, _fd: int | None = None) -> None:
        self.nbytes = nbytes
        if _fd is None:
            _fd = os.memfd_create("seqstore", os.MFD_CLOEXEC)
            try:
                os.ftruncate(_fd, max(nbytes, 1))
            except OSError:
                os.close(_fd)
                raise
        self.fd = _fd
        self.map = _map(_fd, nbytes)
        weakref.finalize(self, os.close, _fd)

    def tensor(self, shape: tuple[int, ...], dtype: torch.dtype, offset: int = 0) -> torch.Tensor:
        """A tensor of ``shape`` and ``dtype`` over this memory from byte ``offset``; it
        keeps the mapping alive."""
        count = math.prod(shape)
        if not count:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self.map, dtype=dtype, count=count, offset=offset).view(shape)

    def __reduce__(self) -> tuple[Any, ...]:
        return _attach, (DupFd(self.fd), self.nbytes)


def _attach(fd: Any, nbytes: int) -> Segment:
    """The :class:`Segment` another process pickled, from its descriptor's duplicate."""
    return Segment(nbytes, _fd=fd.detach())


class Shipped:
    """A tensor on its way out of a worker, in a :class:`Segment` of its own: it unpickles
    as the tensor itself, a view of the same memory.

    Attributes
    ----------
    tensor : torch.Tensor
        The tensor, to fill before it is sent.
    """

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self.segment = Segment(math.prod(shape) * dtype.itemsize)
        self.tensor = self.segment.tensor(shape, dtype)

    def __reduce__(self) -> tuple[Any, ...]:
        return _unship, (self.segment, tuple(self.tensor.shape), self.tensor.dtype)


def _unship(segment: Segment, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return segment.tensor(shape, dtype)


class ShippedArrays:
    """Arrays of their own shapes on their way out of a worker, in one :class:`Segment`:
    they unpickle as ``kind`` (a list type) of tensors over it.

    Parameters
    ----------
    arrays
        The arrays.
    kind
        What they unpickle as: a list type at module level.
    """

    def __init__(self, arrays: list[np.ndarray], kind: type[list[Any]] = list) -> None:
        self.kind = kind
        self.layout = []
        offset = 0
        for a in arrays:
            dtype = torch.from_numpy(a[:0]).dtype
            self.layout.append((a.shape, dtype, offset))
            offset += -(-a.nbytes // 64) * 64  # each at a 64-byte boundary, as malloc would
        self.segment = Segment(offset)
        for a, (shape, dtype, at) in zip(arrays, self.layout, strict=True):
            self.segment.tensor(shape, dtype, at).numpy()[...] = a

    def __reduce__(self) -> tuple[Any, ...]:
        return _unship_arrays, (self.segment, self.layout, self.kind)


def _unship_arrays(
    segment: Segment, layout: list[tuple[tuple[int, ...], torch.dtype, int]], kind: type
) -> list[torch.Tensor]:
    return kind(segment.tensor(shape, dtype, at) for shape, dtype, at in layout)

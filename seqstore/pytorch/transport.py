"""How a Loader's batches travel from its workers to the training loop: through the ring of
shared-memory buffers or one by one, normalised in the workers or on the device."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..backends import Reader
from ..config import LoaderConfig
from .batches import Affine, Ring, normalizing_affine
from .delivery import Delivery
from .workers import SampleTransform

__all__ = ["MAX_RING_BYTES", "Transport", "plan_transport"]

#: Beyond this, batches of a user callable's outputs are shared one by one instead.
MAX_RING_BYTES = 2 << 30


@dataclass
class Transport:
    """The way a loader's batches take.

    Attributes
    ----------
    ring : Ring or None
        The shared-memory buffers that carry same-shaped batches; None: each batch in
        shared memory of its own.
    affine : Affine or None
        The normalisation the workers apply as they stack a batch; None: none there.
    deliver : Delivery
        What the main process does with each batch.
    pin_batches : bool
        Whether the DataLoader pins batches that do not come through the ring.
    """

    ring: Ring | None
    affine: Affine | None
    deliver: Delivery
    pin_batches: bool


def plan_transport(
    cfg: LoaderConfig, transform: SampleTransform, reader: Reader, device: torch.device
) -> Transport:
    """Decide how the batches of a loader of ``cfg`` travel.

    Parameters
    ----------
    cfg
        The loader's config.
    transform
        Its samples' transform (a user callable's output shape is probed on one record).
    reader
        The store.
    device
        Where batches go.

    Returns
    -------
    Transport
    """
    pipeline = transform.pipeline
    affine = None
    sample: tuple[tuple[int, ...], torch.dtype] | None = None
    if pipeline is not None:
        size = pipeline.output_size
        if size is not None and pipeline.output_dtype == np.uint8:
            sample = ((*size, 3), torch.uint8)
            if cfg.dtype == "float32" and cfg.normalize and device.type == "cpu":
                # Normalised in the workers as they stack each batch, in the layout
                # asked for: the main process, whose time the training step needs on a
                # CPU, hands the batch on as it is.
                affine = normalizing_affine(*_ordered(cfg), planar=not cfg.channels_last)
                sample = (affine.shape(sample[0]), torch.float32)
    elif transform.user is not None and cfg.num_workers > 0:
        sample = transform.probe(reader)
    # Batches of same-shaped samples go through the ring, unless it would be huge.
    ring = None
    if cfg.num_workers > 0 and sample is not None:
        slots = cfg.num_workers * (cfg.prefetch_factor + 2)  # see Ring
        shape, dtype = sample
        nbytes = slots * cfg.batch_size * math.prod(shape) * dtype.itemsize
        if nbytes <= MAX_RING_BYTES:
            ring = Ring(slots, cfg.batch_size, *sample, workers=cfg.num_workers)
    pin = cfg.pin_memory if cfg.pin_memory is not None else device.type == "cuda"
    deliver = Delivery(
        device,
        # The built-in pipelines make HWC arrays; the workers' planar normalisation, NCHW
        # batches as the loop gets them.
        hwc=pipeline is not None and not (affine is not None and affine.planar),
        pin=pin and device.type == "cuda",
        channels_last=cfg.channels_last,
        dtype=cfg.dtype,
        normalize=cfg.normalize,
        mean=_ordered(cfg)[0],
        std=_ordered(cfg)[1],
    )
    return Transport(ring, affine, deliver, pin_batches=pin and ring is None)


def _ordered(cfg: LoaderConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean`` and ``std`` in the channel order of the images (given in RGB order)."""
    mean, std = tuple(cfg.mean), tuple(cfg.std)
    if cfg.channels == "bgr":
        return mean[::-1], std[::-1]
    return mean, std

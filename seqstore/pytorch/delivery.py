"""Batches delivered in the main process: NCHW on the device, converted and normalised in
one step there, since uint8 is a quarter of the bytes over worker IPC and over PCIe."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["Delivery", "normalize"]


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
        """The batch on the device. ``owned=False`` (a device other than the CPU):
        ``images`` is a view of a ring buffer that is reused once this returns, so it is
        copied to the device. On the CPU the Loader passes lent buffers, which are the
        caller's (see :meth:`~seqstore.pytorch.batches.Ring.lease`)."""
        device, layout = self.device, self.layout
        non_blocking = device.type == "cuda"
        labels = labels.to(device, non_blocking=non_blocking)
        if isinstance(images, list) and self.hwc:  # HWC images of their own sizes
            return [x.permute(2, 0, 1).to(device) for x in images], labels
        if not isinstance(images, torch.Tensor):
            return images, labels
        hwc = self.hwc and images.ndim == 4  # else a user callable's outputs, as they are
        if hwc:
            images = images.permute(0, 3, 1, 2)  # NCHW with channels-last strides
        if device.type != "cpu":
            if not owned and self.pin:
                images = torch.empty_like(images, pin_memory=True).copy_(images)
            images = images.to(device, non_blocking=non_blocking and self.pin)
        if not hwc:
            return images, labels
        if images.dtype == torch.uint8 and self.dtype != "uint8":
            dtype = getattr(torch, self.dtype)
            if not self.normalize:
                return images.to(dtype=dtype, memory_format=layout), labels
            mean = self.mean.to(device, dtype, non_blocking=non_blocking)
            inv_std = self.inv_std.to(device, dtype, non_blocking=non_blocking)
            return normalize(images, mean, inv_std, layout), labels
        # Already in its dtype: uint8 as asked, or normalised in the workers.
        return images.contiguous(memory_format=layout), labels

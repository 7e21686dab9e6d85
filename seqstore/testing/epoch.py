"""Collecting what a loader yields over one epoch, for checks of coverage and order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["collect_epoch"]


def collect_epoch(loader: Iterable[Any]) -> tuple[list[int], list[int], list[Any]]:
    """Iterate ``loader`` (made with ``with_indices=True``) once.

    Returns
    -------
    tuple
        The store positions and labels of every sample in the order they came, and the
        image batches.
    """
    indices: list[int] = []
    labels: list[int] = []
    images: list[Any] = []
    for x, y, i in loader:
        indices += i.tolist()
        labels += y.tolist()
        images.append(x)
    return indices, labels, images

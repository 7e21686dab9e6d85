"""Collecting what a loader yields over one epoch, for checks of coverage and order; the
epoch spec of one shuffled rank, for checks of the pure order."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..engine.plan import EpochSpec

__all__ = ["collect_epoch", "one_rank_spec"]


def one_rank_spec(
    num_records: int, *, block: int, capacity: int, workers: int, batch_size: int, **changes: Any
) -> EpochSpec:
    """The spec of rank 0 of 1, seed 0, keeping the short last batch, shuffled unless
    ``capacity`` is 1; ``changes`` sets any other field (``scheme``, ``split`` ...)."""
    fields: dict[str, Any] = dict(
        num_records=num_records,
        block=block,
        capacity=capacity,
        shuffle=capacity > 1,
        seed=0,
        rank=0,
        world_size=1,
        workers=workers,
        batch_size=batch_size,
        drop_last=False,
    )
    return EpochSpec(**(fields | changes))


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

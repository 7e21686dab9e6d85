"""The bench's shuffle-quality room: how well a configuration mixes an epoch.

Pure: the engine's epoch plan and the labels, no I/O. The order measured is
:func:`seqstore.engine.plan.rank_order`, the one the Loader yields; the figures are
:mod:`seqstore.engine.quality`'s.
"""

from __future__ import annotations

import numpy as np

from ..engine.plan import EpochSpec, rank_order
from ..engine.quality import classes_per_batch, random_classes_per_batch

__all__ = ["order_quality", "shuffle_quality"]


def shuffle_quality(labels: np.ndarray, spec: EpochSpec, trials: int = 3) -> dict[str, float]:
    """How well the loader of ``spec`` mixes epoch 0 of a store with ``labels``, against a
    uniformly random order.

    Returns
    -------
    dict
        ``displacement``: mean distance a record moves from its storage position, as a
        fraction of the store (about 1/3 for a random permutation); ``classes_per_batch``:
        mean distinct labels in a batch; the ``random_`` keys give both for random orders
        (the classes per batch as expected, the displacement over ``trials`` draws).
    """
    n = len(labels)
    disp, classes = order_quality(rank_order(spec, 0, 0), labels, spec.batch_size)
    rng = np.random.default_rng(spec.seed)
    random = [order_quality(rng.permutation(n), labels, spec.batch_size)[0] for _ in range(trials)]
    return {
        "displacement": disp,
        "classes_per_batch": classes,
        "random_displacement": float(np.mean(random)),
        "random_classes_per_batch": random_classes_per_batch(
            np.bincount(labels[labels >= 0]), spec.batch_size
        ),
    }


def order_quality(order: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(mean displacement of ``order`` from storage order as a fraction of the store, mean
    distinct labels per batch of ``batch_size``) for an epoch's order of record indices."""
    n = len(labels)
    disp = float(np.abs(order - np.arange(len(order))).mean() / max(n, 1))
    return disp, classes_per_batch(order, labels, batch_size)

"""The bench's shuffle-quality room: how well a configuration mixes an epoch.

Pure: the engine's epoch plan and the labels, no I/O. The order measured is
:func:`seqstore.engine.plan.rank_order`, the one the Loader yields.
"""

from __future__ import annotations

import numpy as np

from ..engine.plan import EpochSpec, rank_order

__all__ = ["order_quality", "shuffle_quality"]


def shuffle_quality(
    labels: np.ndarray,
    *,
    block: int,
    capacity: int,
    batch_size: int,
    workers: int,
    seed: int = 0,
    trials: int = 3,
) -> dict[str, float]:
    """How well a configuration mixes one epoch, against a truly random order.

    Returns
    -------
    dict
        ``displacement``: mean distance a record moves from its storage position, as a
        fraction of the store (about 1/3 for a random permutation); ``classes_per_batch``:
        mean distinct labels in a batch; the ``random_`` keys give both for random orders.
    """
    n = len(labels)
    spec = EpochSpec(
        num_records=n,
        block=block,
        capacity=capacity,
        shuffle=True,
        seed=seed,
        rank=0,
        world_size=1,
        workers=workers,
        batch_size=batch_size,
        drop_last=False,
    )
    mixed = rank_order(spec, 0, 0)
    disp, classes = order_quality(mixed, labels, batch_size)
    rng = np.random.default_rng(seed)
    random = [order_quality(rng.permutation(n), labels, batch_size) for _ in range(trials)]
    return {
        "displacement": disp,
        "classes_per_batch": classes,
        "random_displacement": float(np.mean([r[0] for r in random])),
        "random_classes_per_batch": float(np.mean([r[1] for r in random])),
    }


def order_quality(order: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(mean displacement of ``order`` from storage order as a fraction of the store, mean
    distinct labels per batch of ``batch_size``) for an epoch's order of record indices."""
    n = len(labels)
    disp = float(np.abs(order - np.arange(len(order))).mean() / max(n, 1))
    per_batch = [
        len(np.unique(labels[order[i : i + batch_size]])) for i in range(0, len(order), batch_size)
    ]
    return disp, float(np.mean(per_batch)) if per_batch else 0.0

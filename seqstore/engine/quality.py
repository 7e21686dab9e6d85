"""How well an epoch's order mixes the classes: figures that stand for accuracy.

A batch whose samples come from few classes gives a gradient step biased toward them, and
a model trained on such batches loses accuracy (``benchmarks/convergence.py`` measures how
much). Two figures, of an order of store indices and the store's labels:

- :func:`classes_per_batch`: the mean number of distinct labels in a batch (226 of 256 for
  a uniform shuffle of ImageNet's 1000 classes, :func:`random_classes_per_batch`);
- :func:`batch_skew`: how far the label shares of a batch, or of a window of consecutive
  batches, are from the store's (total variation distance), as a multiple of what a uniform
  shuffle gives: 1 for a uniform shuffle, more for batches that lean to some classes. Over
  windows of 10 batches it follows accuracy most closely (``benchmarks/convergence.py``).

:func:`repeat_rate` (how often a label repeats the one before it, over a uniform shuffle's
rate) tells a storage order that keeps classes together; it says less of a loader's
stream, whose batches are made of parts in worker order.

:func:`predict_classes_per_batch` computes the first figure for a loader's own order (the
first batches of its first rank, drawn by :func:`~seqstore.engine.plan.rank_order`'s
rules) from labels alone, without reading a record: the Loader warns with it
(:mod:`seqstore.mixcheck`), ``seqstore bench`` and the convergence benchmark report it.

Pure: no I/O, no torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .plan import EpochSpec, rank_order

__all__ = [
    "batch_skew",
    "classes_per_batch",
    "predict_classes_per_batch",
    "random_classes_per_batch",
    "repeat_rate",
    "run_labels",
]

LabelsOf = Callable[[np.ndarray], np.ndarray]
"""Store indices -> their labels."""


def classes_per_batch(order: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Mean distinct labels in the batches of ``batch_size`` that ``order`` (store indices)
    makes; ``labels`` holds the label of every store index in ``order``."""
    got = labels[order]
    counts = [len(np.unique(got[i : i + batch_size])) for i in range(0, len(got), batch_size)]
    return float(np.mean(counts)) if counts else 0.0


def _shares(labels: np.ndarray) -> np.ndarray:
    """Each class's share of the labelled records (label -1: unlabelled)."""
    valid = labels >= 0
    return np.bincount(labels[valid]) / max(int(valid.sum()), 1)


def _skew(got: np.ndarray, shares: np.ndarray, size: int) -> float:
    distances = []
    for i in range(0, len(got) - size + 1, size):
        counts = np.bincount(got[i : i + size], minlength=len(shares))
        distances.append(0.5 * np.abs(counts / size - shares).sum())
    return float(np.mean(distances)) if distances else 0.0


def batch_skew(
    order: np.ndarray, labels: np.ndarray, batch_size: int, window: int = 1, seed: int = 0
) -> float:
    """Mean total variation distance between the label shares of each run of ``window``
    consecutive full batches of ``order`` and the store's, over the same for a uniform
    shuffle of the store (the mean of 4 seeded draws): 1 for a uniform shuffle, more for
    batches that lean to some classes. Over a window of several batches it also sees
    batches that are mixed each but follow each other in runs of a few classes, which
    the model feels as much (the first loaders' early batches of every epoch)."""
    shares = _shares(labels)
    got = labels[order]
    size = batch_size * window
    rng = np.random.default_rng(seed)
    draws = [_skew(labels[rng.permutation(len(labels))], shares, size) for _ in range(4)]
    base = float(np.mean(draws))
    return _skew(got[got >= 0], shares, size) / base if base else 1.0


def random_classes_per_batch(class_counts: np.ndarray, batch_size: int) -> float:
    """Expected distinct labels in a batch of a uniform shuffle of a store whose classes
    hold ``class_counts`` records (drawn without replacement, as an epoch is)."""
    counts = np.asarray(class_counts, np.float64)
    n = counts.sum()
    b = min(batch_size, int(n))
    if b == 0:
        return 0.0
    # P(no record of class k among b of n) = prod_{i<b} (n - n_k - i) / (n - i)
    i = np.arange(b, dtype=np.float64)
    with np.errstate(divide="ignore"):  # log(0): a class no draw can miss
        log_none = np.log(np.clip(n - counts[:, None] - i, 0, None) / (n - i)).sum(axis=1)
    return float((1 - np.exp(log_none)).sum())


def repeat_rate(order: np.ndarray, labels: np.ndarray) -> float:
    """How often a sample of ``order`` has the label of the one before it, over what a
    uniform shuffle gives (sum of the squared class shares): 1 for a uniform shuffle,
    up to one over that sum for an order that keeps each class together."""
    got = labels[order]
    if len(got) < 2:
        return 1.0
    same = float(np.mean(got[1:] == got[:-1]))
    expected = float((_shares(labels) ** 2).sum())
    return same / expected if expected else 1.0


def run_labels(run: float, classes: int) -> LabelsOf:
    """Labels of a model store: runs of ``run`` records of one class, ``classes`` classes
    in turn. What a store whose labels were sampled looks like to the order."""
    run = max(run, 1.0)
    classes = max(classes, 1)

    def labels_of(indices: np.ndarray) -> np.ndarray:
        return (np.floor(indices / run).astype(np.int64)) % classes

    return labels_of


def predict_classes_per_batch(spec: EpochSpec, labels_of: LabelsOf, batches: int = 64) -> float:
    """Mean distinct labels in the first ``batches`` batches of rank 0 in epoch 0 of
    ``spec``: the figure of :func:`classes_per_batch` for the loader's own order, computed
    on indices only (each worker's shuffle buffer is replayed for its first parts).

    Cost: each worker's buffer capacity plus its share of ``batches`` batches, in records;
    a few thousand for an ImageNet loader of 8 workers, whatever the store's size.
    """
    order = rank_order(spec, 0, 0, batches=batches)
    size = spec.batch_size
    counts = [len(np.unique(labels_of(order[i : i + size]))) for i in range(0, len(order), size)]
    return float(np.mean(counts)) if counts else 0.0

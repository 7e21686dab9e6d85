"""Whether a loader can mix its store's order: smaller blocks where it helps, and the check
behind :class:`~seqstore.errors.OrderWarning` where it does not.

A store written in class order (``convert --no-shuffle``, data read in place from another
tool, an old tensorpack file) holds each class in one long run. A loader reads it in
blocks and mixes them in a bounded buffer, and where blocks are large against the buffer,
batches hold few classes and the model loses accuracy. :func:`label_runs` reads the
labels (every one where the store keeps them apart from the images, a few sampled runs of
records otherwise) and tells whether they come in runs; a store that ``seqstore convert``
wrote shuffled is never read. For such a store, :func:`fit_blocks` makes the blocks small
enough that each worker's buffer spans :data:`MIX_BLOCKS` of them (the default settings'
ratio at ImageNet's size) and splits every batch over the workers, and
:func:`order_warning` predicts the loader's own classes per
batch on indices alone (:func:`~seqstore.engine.quality.predict_classes_per_batch`) and
compares it with a uniform shuffle's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .backends import Reader
from .engine.plan import EpochSpec
from .engine.quality import (
    LabelsOf,
    predict_classes_per_batch,
    random_classes_per_batch,
    repeat_rate,
    run_labels,
)

__all__ = ["MIN_MIX", "MIX_BLOCKS", "LabelRuns", "fit_blocks", "label_runs", "order_warning"]

MIN_MIX = 0.5
"""Least share of a uniform shuffle's classes per batch that a loader may reach without a
warning. In ``benchmarks/convergence.py`` (docs/shuffle.md) the orders below it lost 22
points or more; above it, most trained within a few points, but an order whose batches
are mixed each yet follow each other in runs of a few classes lost as much. The full
buffers and :func:`fit_blocks` prevent those rather than this check detecting them."""

MIX_BLOCKS = 8
"""Fewest blocks each worker's buffer spans over a store whose labels come in runs."""

# Sampled labels of stores that keep none apart: runs of consecutive records, spread evenly.
_RUNS, _RUN_LENGTH = 16, 16


@dataclass(frozen=True)
class LabelRuns:
    """What a store's labels look like to the order.

    Attributes
    ----------
    labels_of : callable
        Store indices -> labels: the store's own, or a model of runs fitted to a sample.
    class_counts : numpy.ndarray
        Records per class.
    repeat_rate : float
        How much more often a label repeats the one before it in storage order than in a
        uniform shuffle (:func:`~seqstore.engine.quality.repeat_rate`).
    """

    labels_of: LabelsOf
    class_counts: np.ndarray
    repeat_rate: float


def _sampled_runs(reader: Reader) -> np.ndarray:
    """Labels of :data:`_RUNS` runs of :data:`_RUN_LENGTH` consecutive records spread
    evenly over the store, as a (runs, length) array (fewer for a small store)."""
    n = len(reader)
    length = min(_RUN_LENGTH, n)
    starts = np.unique(np.linspace(0, n - length, min(_RUNS, n)).astype(np.int64))
    runs = [
        [label for _, label, _ in reader.read_raw_block(s, s + length)] for s in starts.tolist()
    ]
    return np.array(runs, np.int64)


def label_runs(reader: Reader) -> LabelRuns | None:
    """The store's labels where they come in runs of one class (a label repeats at least
    twice as often as in a uniform shuffle); None for a store as mixed as a shuffle, or one
    that ``seqstore convert`` wrote shuffled."""
    if reader.manifest.provenance.options.get("shuffle") is True:
        return None
    if reader.labels_apart:
        labels = reader.labels()
        counts = np.bincount(labels[labels >= 0])
        found = LabelRuns(labels.__getitem__, counts, repeat_rate(np.arange(len(labels)), labels))
    else:
        runs = _sampled_runs(reader)
        seen = runs[runs >= 0]
        if runs.shape[1] < 2 or not seen.size:
            return None
        classes = max(len(reader.classes), len(np.unique(seen)))
        same = float(np.mean(runs[:, 1:] == runs[:, :-1]))
        # Runs of L records of one class repeat a label with probability 1 - 1/L.
        run = len(reader) / classes if same == 1 else 1 / (1 - same)
        counts = np.full(classes, len(reader) // classes)
        found = LabelRuns(run_labels(run, classes), counts, same * classes)
    return found if found.repeat_rate >= 2 else None


def fit_blocks(spec: EpochSpec, runs: LabelRuns | None) -> EpochSpec:
    """``spec`` fitted to a store whose labels come in ``runs``, for a shuffled loader:
    every batch split over the workers (so that it draws from the rank's whole buffer),
    and blocks small enough that each worker's buffer spans :data:`MIX_BLOCKS` of them.
    ``spec`` itself for a mixed store, or without shuffle."""
    if runs is None or not spec.shuffle:
        return spec
    block = min(spec.block, max(1, spec.capacity // MIX_BLOCKS))
    # Blocks of one record are a uniform permutation already: nothing to split for.
    return dataclasses.replace(spec, block=block, split=spec.workers > 1 and block > 1)


def order_warning(
    where: str, configured: EpochSpec, fitted: EpochSpec, runs: LabelRuns | None
) -> str | None:
    """The warning for a loader over the store at ``where``, whose labels come in ``runs``,
    given the ``configured`` spec and the one :func:`fit_blocks` made of it; None when
    nothing is worth saying.

    It warns where the loader's batches would hold less than :data:`MIN_MIX` of a uniform
    shuffle's classes, and where its blocks had to shrink to a quarter of those configured
    or less (many more reads: slower from a hard disk or object storage). Never where the
    loader does not shuffle (storage order was asked for), nor over a mixed store.
    """
    if runs is None or not fitted.shuffle:
        return None
    reference = random_classes_per_batch(runs.class_counts, fitted.batch_size)
    predicted = predict_classes_per_batch(fitted, runs.labels_of)
    head = (
        f"store '{where}' keeps its classes together (a label repeats "
        f"{runs.repeat_rate:.0f}x as often as in a shuffled order)"
    )
    fix = (
        f"write it shuffled (seqstore convert {where} NEW --shuffle), or give the Loader a "
        f"larger shuffle_buffer (now {fitted.capacity * fitted.workers} records)"
    )
    if predicted < MIN_MIX * reference:
        return (
            f"{head}, and with these settings a batch of {fitted.batch_size} holds about "
            f"{predicted:.0f} classes where a shuffle gives {reference:.0f}: a model trained on "
            f"it can lose accuracy. To mix it, {fix}"
        )
    if fitted.block * 4 <= configured.block:
        return (
            f"{head}: to mix it, the Loader reads blocks of {fitted.block} records instead of "
            f"{configured.block}, which is slower from a hard disk or object storage. To read "
            f"it in long blocks, {fix}"
        )
    return None

"""A shuffle that mixes like a global one whatever the store's order: batches split over the
workers, full buffers, folders permuted record by record, the figures that predict accuracy
and the warning where the settings cannot make up for the order."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import seqstore
from seqstore import Loader
from seqstore.convert import convert
from seqstore.engine.plan import EpochSpec, WorkerEpoch, rank_order
from seqstore.engine.quality import (
    batch_skew,
    classes_per_batch,
    predict_classes_per_batch,
    random_classes_per_batch,
    repeat_rate,
    run_labels,
)
from seqstore.errors import OrderWarning
from seqstore.mixcheck import fit_blocks, label_runs, order_warning
from seqstore.pytorch.batches import Ring, Samples, Slot, join
from seqstore.testing import collect_epoch, make_image_folder, one_rank_spec

IMAGENET = 1_281_167


def _imagenet(workers: int, scheme: int = 2) -> EpochSpec:
    """Default settings at ImageNet's size: 4 MB blocks of 110 KB records (36), a 256 MB
    buffer per rank (2330 records) shared by ``workers``, batches of 256."""
    return one_rank_spec(
        IMAGENET,
        block=36,
        capacity=2330 // workers,
        workers=workers,
        batch_size=256,
        scheme=scheme,
        split=scheme == 2,  # as the Loader fits a store in class order
    )


def test_a_class_ordered_imagenet_gives_batches_of_many_classes() -> None:
    labels = np.arange(IMAGENET) * 1000 // IMAGENET  # 1000 classes, each in one run
    for workers in (8, 2):
        got = classes_per_batch(rank_order(_imagenet(workers), 0, 0), labels, 256)
        assert got >= 120, workers  # a uniform shuffle: 226
    # What batches of one worker's stream gave (scheme 1): 36.
    assert classes_per_batch(rank_order(_imagenet(8, scheme=1), 0, 0), labels, 256) < 40
    assert 225 < random_classes_per_batch(np.bincount(labels), 256) < 227


def test_the_prediction_follows_the_whole_epoch() -> None:
    labels = np.arange(IMAGENET) * 1000 // IMAGENET
    for scheme in (1, 2):
        spec = _imagenet(8, scheme)
        whole = classes_per_batch(rank_order(spec, 0, 0), labels, 256)
        assert predict_classes_per_batch(spec, lambda i: labels[i]) == pytest.approx(whole, rel=0.2)
    # A model of runs: the same store as runs of 1281 records of 1000 classes.
    spec = _imagenet(8)
    model = predict_classes_per_batch(spec, run_labels(IMAGENET / 1000, 1000))
    assert model == pytest.approx(predict_classes_per_batch(spec, lambda i: labels[i]), rel=0.05)


def test_repeat_rate_tells_runs_from_a_shuffle() -> None:
    labels = np.repeat(np.arange(10), 100)
    assert repeat_rate(np.arange(1000), labels) > 9  # at most 10 (one over 1/10)
    assert repeat_rate(np.random.default_rng(0).permutation(1000), labels) < 1.3


def test_each_batch_takes_a_part_from_every_worker() -> None:
    spec = EpochSpec(
        num_records=500, block=10, capacity=40, shuffle=True, seed=1, rank=0, world_size=1,
        workers=3, batch_size=16, drop_last=False, split=True,
    )  # fmt: skip
    read = [set(np.asarray(WorkerEpoch(spec, 0, 0, w).order()).tolist()) for w in range(3)]
    order = rank_order(spec, 0, 0)
    for b in range(spec.num_batches):
        batch = order[b * 16 : (b + 1) * 16].tolist()
        # Parts of 6, 5 and 5 in worker order; the last batch (4) of parts of 2, 1 and 1.
        sizes = (6, 5, 5) if len(batch) == 16 else (2, 1, 1)
        cuts = np.cumsum((0, *sizes))
        for w in range(3):
            assert set(batch[cuts[w] : cuts[w + 1]]) <= read[w], (b, w)


@pytest.fixture(scope="module")
def ordered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A folder of 6 classes x 20 images, and stores of it in class order and shuffled."""
    root = tmp_path_factory.mktemp("shuffle")
    images = make_image_folder(root / "images", classes=6, per_class=20, max_side=64)
    convert(images, root / "ordered", format="lmdb", shuffle=False, progress=False)
    convert(images, root / "shuffled", format="lmdb", progress=False)
    return {"folder": images, "ordered": root / "ordered", "shuffled": root / "shuffled"}


def _loader(path: Path, **options: Any) -> Loader:
    defaults: dict[str, Any] = dict(batch_size=12, image_size=16, with_indices=True, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OrderWarning)
        return Loader(path, **(defaults | options))


def test_a_class_ordered_store_mixes_through_the_loader(ordered: dict[str, Path]) -> None:
    # Default buffer (larger than the store) and 2 workers: each batch of 12 draws from both
    # workers' full buffers, so it holds about as many classes as a shuffle's (5.1 of 6).
    labels = seqstore.open(ordered["ordered"]).labels()
    loader = _loader(ordered["ordered"], num_workers=2, block_mb=0.05)
    indices = collect_epoch(loader)[0]
    assert sorted(indices) == list(range(120))
    assert indices == rank_order(loader.spec, 0, 0).tolist()
    assert classes_per_batch(np.array(indices), labels, 12) > 4.2
    # Every batch kept (its ring buffer lent): later parts go to memory of their own, and
    # every image is its record's, as made in-process.
    options = dict(num_workers=2, block_mb=0.05, dtype="uint8", prefetch_factor=1)
    split = collect_epoch(_loader(ordered["ordered"], **options))
    alone = collect_epoch(_loader(ordered["ordered"], **(options | {"num_workers": 0})))
    mine, reference = (dict(zip(r[0], torch.cat(r[2]), strict=True)) for r in (split, alone))
    assert all(torch.equal(mine[i], reference[i]) for i in range(120))


def test_a_folder_read_in_place_is_permuted_record_by_record(ordered: dict[str, Path]) -> None:
    loader = _loader(ordered["folder"], num_workers=2)
    assert (loader.spec.block, loader.spec.capacity) == (1, 1)  # no block, no buffer needed
    labels = loader.reader.labels()
    runs = [collect_epoch(loader)[0] for _ in range(2)]
    for indices in runs:
        assert sorted(indices) == list(range(120))
        assert classes_per_batch(np.array(indices), labels, 12) > 4.2
    assert runs[0] != runs[1]  # the next epoch, another permutation
    # Unshuffled it is storage order, as for any store.
    assert collect_epoch(_loader(ordered["folder"], shuffle=False))[0] == list(range(120))


def test_blocks_shrink_to_mix_a_store_in_class_order(ordered: dict[str, Path]) -> None:
    # A 40-record buffer, 20 per worker: blocks of 2 (not 3), so each spans 10 of them.
    loader = _loader(ordered["ordered"], shuffle_buffer=40, block_mb=0.005, num_workers=2)
    assert (loader.spec.capacity, loader.spec.block, loader.spec.split) == (20, 2, True)
    labels = loader.reader.labels()
    indices = collect_epoch(loader)[0]
    assert sorted(indices) == list(range(120))
    assert classes_per_batch(np.array(indices), labels, 12) > 4.2
    # Left as configured, and whole batches per worker: a shuffled store; a folder, whose
    # records are permuted one by one. A buffer that spans enough blocks keeps them.
    mixed = _loader(ordered["shuffled"], shuffle_buffer=40, block_mb=0.005, num_workers=2)
    assert (mixed.spec.block, mixed.spec.split) == (3, False)
    assert not _loader(ordered["folder"], num_workers=2).spec.split
    assert _loader(ordered["ordered"], shuffle_buffer=240, block_mb=0.005).spec.block == 3


def test_the_loader_warns_once_where_it_reads_much_smaller_blocks(
    ordered: dict[str, Path],
) -> None:
    small = dict(shuffle_buffer=4, block_mb=0.2, num_workers=2)
    with pytest.warns(OrderWarning) as caught:
        loader = Loader(ordered["ordered"], batch_size=12, **small)
    assert len(caught) == 1 and loader.spec.block == 1  # from 135
    message = str(caught[0].message)
    assert str(ordered["ordered"]) in message and "--shuffle" in message
    assert "blocks of 1 records instead of 135" in message and "\n" not in message
    # No warning: a shuffled store, a buffer that mixes, a folder, no shuffle.
    _loader(ordered["shuffled"], **small)
    _loader(ordered["ordered"], num_workers=2)
    _loader(ordered["folder"], **small)
    _loader(ordered["ordered"], shuffle=False, num_workers=2)


def _spec(workers: int, capacity: int, block: int) -> EpochSpec:
    return EpochSpec(
        num_records=120, block=block, capacity=capacity, shuffle=True, seed=3, rank=0,
        world_size=1, workers=workers, batch_size=12, drop_last=False,
    )  # fmt: skip


def test_settings_that_cannot_mix_are_named(ordered: dict[str, Path]) -> None:
    runs = label_runs(seqstore.open(ordered["ordered"]))
    assert runs is not None and runs.repeat_rate > 5  # 6 classes, one run each
    unfitted = _spec(2, 2, 60)  # a 4-record buffer over 60-record blocks
    message = order_warning("S", unfitted, unfitted, runs)
    assert message is not None and "lose accuracy" in message and "shuffle_buffer" in message
    fitted = fit_blocks(unfitted, runs)
    assert fitted.block == 1 and order_warning("S", fitted, fitted, runs) is None
    assert label_runs(seqstore.open(ordered["shuffled"])) is None


def test_a_store_of_sampled_labels_is_checked_too(ordered: dict[str, Path]) -> None:
    # A reader that keeps no labels apart (a tensorpack file, say): a few runs are read.
    reader = seqstore.open(ordered["ordered"])
    reader.labels_apart = False
    reader.labels = None  # type: ignore[method-assign, assignment]  # never called
    runs = label_runs(reader)
    assert runs is not None and runs.repeat_rate > 5
    unfitted = _spec(2, 2, 60)
    assert order_warning("S", unfitted, unfitted, runs) is not None
    shuffled = seqstore.open(ordered["shuffled"])
    shuffled.labels_apart = False
    shuffled.manifest.provenance.options.pop("shuffle")  # judged by its labels alone
    assert label_runs(shuffled) is None


def test_batch_skew_and_a_shuffles_classes_per_batch() -> None:
    labels = np.repeat(np.arange(10), 500)
    assert batch_skew(np.arange(5000), labels, 128) > 8  # one class a batch, mostly
    assert 0.9 < batch_skew(np.random.default_rng(1).permutation(5000), labels, 128) < 1.1
    # Exact for draws without replacement: 10 classes of 100, batches of 32.
    assert random_classes_per_batch(np.full(10, 100), 32) == pytest.approx(9.67545, abs=1e-5)
    assert random_classes_per_batch(np.array([5]), 32) == 1.0


def test_parts_join_in_place_or_into_new_memory() -> None:
    ring = Ring(slots=2, batch_size=4, shape=(3,), dtype=torch.uint8, workers=2)
    ring.buffers[1, :4] = torch.arange(12, dtype=torch.uint8).view(4, 3)
    # Every part where it belongs in one buffer: the batch is that buffer.
    assert join([Slot(1, 0, 3), Slot(1, 3, 1)], ring) == Slot(1, 0, 4)
    # A worker that found the buffer lent sent its part in memory of its own: joined.
    ring.busy[1] = 2
    own = torch.full((1, 3), 99, dtype=torch.uint8)
    joined = join([Slot(1, 0, 3), own], ring)
    assert joined.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [99, 99, 99]]
    assert int(ring.busy[1]) == 0  # released once copied out
    # Without a ring: lists of samples, tensors and what default_collate makes of dicts.
    assert join([Samples([b"a"]), Samples([b"b", b"c"])], None) == [b"a", b"b", b"c"]
    parts = [
        {"x": torch.zeros(2), "y": [torch.ones(2)]},
        {"x": torch.ones(1), "y": [torch.ones(1)]},
    ]
    joined = join(parts, None)
    assert joined["x"].tolist() == [0, 0, 1] and joined["y"][0].tolist() == [1, 1, 1]


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_a_last_batch_smaller_than_the_worker_count(ordered: dict[str, Path]) -> None:
    # 120 records in batches of 7 over 3 workers: the last batch (1 record) is worker 0's
    # part alone; the others end one part earlier.
    loader = _loader(ordered["shuffled"], num_workers=3, batch_size=7, shuffle_buffer=30)
    indices, _, images = collect_epoch(loader)
    assert [len(x) for x in images] == [7] * 17 + [1] == [7] * (len(loader) - 1) + [1]
    assert indices == rank_order(loader.spec, 0, 0).tolist()
    # Resumed after 5 batches on the same shape: exactly the rest.
    first = _loader(ordered["shuffled"], num_workers=3, batch_size=7, shuffle_buffer=30)
    for i, _ in enumerate(first):
        if i == 4:
            break
    resumed = _loader(ordered["shuffled"], num_workers=3, batch_size=7, shuffle_buffer=30)
    resumed.load_state_dict(first.state_dict())
    assert collect_epoch(resumed)[0] == indices[5 * 7 :]

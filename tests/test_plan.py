"""The epoch plan: goldens that pin the order and the augmentation draws, and checks that
the seed, the epoch and the rank each change what they should."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from seqstore.config import LoaderConfig
from seqstore.engine.order import BlockOrder
from seqstore.engine.plan import EpochSpec, rank_order, worker_order
from seqstore.engine.stream import sample_rng
from seqstore.transforms import RandomResizedCrop


def _spec(**changes: Any) -> EpochSpec:
    """23 records in blocks of 4, 2 ranks of 2 workers, batches of 3, a 5-record buffer."""
    fields: dict[str, Any] = dict(
        num_records=23,
        block=4,
        capacity=5,
        shuffle=True,
        seed=7,
        rank=0,
        world_size=2,
        workers=2,
        batch_size=3,
        drop_last=False,
    )
    return EpochSpec(**(fields | changes))


# (rank, worker) -> the indices that worker emits in epoch 1. A change here changes every
# saved loader state's meaning: resume depends on these staying what they are. Batches of 3
# split over 2 workers: worker 0 makes parts of 2, worker 1 parts of 1.
GOLDEN = {
    "shuffled": (
        _spec(split=True),
        {
            (0, 0): [3, 0, 21, 22, 1, 20, 2, 12],
            (0, 1): [13, 8, 14, 15],
            (1, 0): [16, 17, 9, 4, 11, 10, 19, 18],
            (1, 1): [6, 0, 5, 7],
        },
    ),
    # The order of loader states up to version 4: whole batches per worker.
    "scheme 1": (
        _spec(scheme=1),
        {
            (0, 0): [3, 0, 21, 20, 2, 1],
            (0, 1): [22, 12, 13, 8, 14, 15],
            (1, 0): [16, 17, 9, 11, 10, 18],
            (1, 1): [5, 4, 19, 6, 7, 0],
        },
    ),
    "storage order": (
        _spec(shuffle=False, capacity=1),
        {
            (0, 0): [0, 1, 2, 6, 7, 8],
            (0, 1): [3, 4, 5, 9, 10, 11],
            (1, 0): [12, 13, 14, 18, 19, 20],
            (1, 1): [15, 16, 17, 21, 22, 0],
        },
    ),
    "drop_last": (
        _spec(drop_last=True),
        {
            (0, 0): [3, 0, 21, 20, 2, 1],
            (0, 1): [22, 13, 12],
            (1, 0): [11, 16, 8, 10, 9, 17],
            (1, 1): [19, 18, 4],
        },
    ),
}


@pytest.mark.parametrize("name", list(GOLDEN))
def test_worker_order_golden(name: str) -> None:
    spec, expected = GOLDEN[name]
    for (rank, worker), order in expected.items():
        got = worker_order(spec, 1, rank, worker)
        assert got.dtype == np.int64
        assert got.tolist() == order, (rank, worker)


def test_first_emission_golden_full_buffer_and_scheme_1_warmup() -> None:
    # A 300-record buffer: scheme 2 emits once it is full, scheme 1 from 256 records on.
    shape = dict(num_records=600, block=50, capacity=300, world_size=1, workers=1)
    assert worker_order(_spec(**shape), 1, 0, 0)[:8].tolist() == [
        481,
        383,
        256,
        397,
        579,
        400,
        347,
        291,
    ]
    assert worker_order(_spec(**shape, scheme=1), 1, 0, 0)[:8].tolist() == [
        447,
        378,
        398,
        391,
        562,
        580,
        316,
        280,
    ]


def test_augmentation_draws_golden() -> None:
    assert sample_rng(7, 1, 5).random(3).tolist() == [
        0.550412369926397,
        0.11205366140162842,
        0.5861121310577786,
    ]
    # (top, left, height, width) of record 5's crop in epoch 1 of seed 7, on a 100x80 image
    assert RandomResizedCrop(32).get_params(100, 80, sample_rng(7, 1, 5)) == (2, 23, 77, 61)


def _pattern(order: np.ndarray) -> list[int]:
    """The order relative to its own records: what the shuffle buffer decided."""
    return np.argsort(np.argsort(order)).tolist()


def test_seed_changes_the_block_order_and_the_buffer() -> None:
    many_blocks = dict(num_records=200, block=10, capacity=1, world_size=1, workers=1)
    one_block = dict(num_records=200, block=200, capacity=50, world_size=1, workers=1)
    # Blocks alone (a 1-record buffer keeps the read order), then the buffer alone.
    for shape in (many_blocks, one_block):
        a, b = (worker_order(_spec(**shape, seed=s), 0, 0, 0) for s in (1, 2))
        assert sorted(a) == sorted(b) and a.tolist() != b.tolist(), shape


def test_epoch_changes_the_block_order_and_the_buffer() -> None:
    for shape in (
        dict(num_records=200, block=10, capacity=1, world_size=1, workers=1),
        dict(num_records=200, block=200, capacity=50, world_size=1, workers=1),
    ):
        spec = _spec(**shape)
        a, b = (worker_order(spec, e, 0, 0) for e in (0, 1))
        assert sorted(a) == sorted(b) and a.tolist() != b.tolist(), shape


def test_rank_changes_the_buffer() -> None:
    # Each rank reads one whole 100-record block: the same input pattern, so only the
    # buffer's key can tell the ranks' mixes apart.
    spec = _spec(num_records=200, block=100, capacity=50, world_size=2, workers=1, batch_size=10)
    assert _pattern(worker_order(spec, 0, 0, 0)) != _pattern(worker_order(spec, 0, 1, 0))


def test_worker_changes_the_buffer() -> None:
    spec = _spec(num_records=200, block=100, capacity=50, world_size=1, workers=2, batch_size=100)
    assert _pattern(worker_order(spec, 0, 0, 0)) != _pattern(worker_order(spec, 0, 0, 1))


def _blocks(n: int, block: int, seed: int) -> list[list[int]]:
    return BlockOrder(n, block, seed=seed, epoch=2, shuffle=True).spans(0, n).tolist()


def test_block_order_golden_and_seeded() -> None:
    assert _blocks(20, 4, seed=3) == [[12, 16], [4, 8], [0, 4], [16, 20], [8, 12]]
    assert _blocks(20, 4, seed=4) != _blocks(20, 4, seed=3)


def test_augmentation_follows_seed_epoch_and_record() -> None:
    base = sample_rng(7, 1, 5).random(4).tolist()
    for other in ((8, 1, 5), (7, 2, 5), (7, 1, 6)):
        assert sample_rng(*other).random(4).tolist() != base, other


def test_rank_order_takes_a_part_of_each_batch_from_every_worker() -> None:
    _, golden = GOLDEN["shuffled"]
    w0, w1 = golden[(1, 0)], golden[(1, 1)]
    expected = [i for b in range(4) for i in w0[2 * b : 2 * b + 2] + w1[b : b + 1]]
    assert rank_order(_spec(split=True), 1, 1).tolist() == expected
    _, old = GOLDEN["scheme 1"]
    w0, w1 = old[(1, 0)], old[(1, 1)]
    expected = w0[0:3] + w1[0:3] + w0[3:6] + w1[3:6]  # whole batches, round-robin
    assert rank_order(_spec(scheme=1), 1, 1).tolist() == expected


def test_from_config_converts_megabytes_to_records() -> None:
    cfg = LoaderConfig(
        path=".", block_mb=1.0, shuffle_buffer_mb=10.0, num_workers=4, batch_size=16, seed=2
    )
    spec = EpochSpec.from_config(
        cfg, num_records=1000, mean_record_bytes=100_000, rank=1, world_size=2
    )
    assert (spec.block, spec.capacity, spec.workers) == (10, 25, 4)  # 100 records over 4
    assert (spec.rank, spec.world_size, spec.seed, spec.batch_size) == (1, 2, 2, 16)
    assert spec.num_batches == 32  # 500 records per rank
    unshuffled = EpochSpec.from_config(
        cfg.model_copy(update={"shuffle": False}), num_records=1000, mean_record_bytes=1e5
    )
    assert unshuffled.capacity == 1
    by_count = EpochSpec.from_config(
        cfg.model_copy(update={"shuffle_buffer": 8}), num_records=1000, mean_record_bytes=1e5
    )
    assert by_count.capacity == 2


@pytest.mark.parametrize(
    "changes",
    [dict(rank=2), dict(block=0), dict(capacity=0), dict(shuffle=False), dict(seed=-1)],
)
def test_an_impossible_spec_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _spec(**changes)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("split", [False, True])
def test_unpadded_ranks_give_every_record_exactly_once(shuffle: bool, split: bool) -> None:
    """``pad=False`` (exact evaluation): over any world size, worker count and record
    count, the ranks' orders together are every record once; a rank's batches are its
    ``batches_over`` (its own len()), and they differ by at most one between ranks."""
    if split and not shuffle:
        return
    for n, world, workers in itertools.product((1, 5, 23, 24, 41), (1, 2, 3, 4), (1, 2, 3)):
        spec = _spec(
            num_records=n,
            world_size=world,
            workers=workers,
            pad=False,
            shuffle=shuffle,
            split=split,
            capacity=5 if shuffle else 1,
        )
        orders = [rank_order(spec, 2, r) for r in range(world)]
        assert sorted(np.concatenate(orders).tolist()) == list(range(n)), (n, world, workers)
        counts = [spec.batches_over(None, rank=r) for r in range(world)]
        assert [-(-len(o) // spec.batch_size) for o in orders] == counts
        assert max(counts) - min(counts) <= 1


def test_unpadded_ranks_are_refused_with_drop_last() -> None:
    with pytest.raises(ValueError, match="pad_ranks=False is exact evaluation"):
        LoaderConfig(path="x", drop_last=True, pad_ranks=False)

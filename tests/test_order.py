"""Properties of the epoch order: the pure functions behind every loader."""

from __future__ import annotations

from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstore.engine.order import block_order, iter_indices, num_batches, worker_plan
from seqstore.engine.shuffle import ShuffleBuffer

shapes = st.fixed_dictionaries(
    {
        "n": st.integers(0, 400),
        "block": st.integers(1, 64),
        "seed": st.integers(0, 2**31),
        "epoch": st.integers(0, 5),
        "shuffle": st.booleans(),
        "world": st.integers(1, 4),
        "workers": st.integers(1, 4),
        "batch_size": st.integers(1, 17),
        "drop_last": st.booleans(),
    }
)


def _plans(cfg: dict, rank: int) -> list:
    args = {k: v for k, v in cfg.items() if k not in ("world", "workers")}
    return [
        worker_plan(**args, rank=rank, world=cfg["world"], worker=w, workers=cfg["workers"])
        for w in range(cfg["workers"])
    ]


def _rank_indices(cfg: dict, rank: int) -> list[int]:
    return [i for plan in _plans(cfg, rank) for i in iter_indices(plan.spans)]


@given(
    st.integers(0, 500), st.integers(1, 50), st.integers(0, 99), st.integers(0, 9), st.booleans()
)
def test_blocks_are_contiguous_and_cover_the_store(
    n: int, block: int, seed: int, epoch: int, shuffle: bool
) -> None:
    spans = block_order(n, block, seed=seed, epoch=epoch, shuffle=shuffle)
    assert all(0 < stop - start <= block for start, stop in spans)
    assert sorted(i for s in spans for i in range(*s)) == list(range(n))
    if not shuffle:
        assert [i for s in spans for i in range(*s)] == list(range(n))


@settings(max_examples=300, deadline=None)
@given(shapes)
def test_every_record_once_per_epoch_over_ranks_and_workers(cfg: dict) -> None:
    n, world = cfg["n"], cfg["world"]
    counts = Counter(i for r in range(world) for i in _rank_indices(cfg, r))
    per_rank = [len(_rank_indices(cfg, r)) for r in range(world)]
    assert len(set(per_rank)) == 1  # equal work on every rank
    assert set(counts) <= set(range(n))
    if cfg["drop_last"]:
        assert all(c == 1 for c in counts.values())  # disjoint; only a tail is dropped
        size = cfg["batch_size"]
        assert per_rank[0] == n // world // size * size  # whole batches only
        assert n - sum(counts.values()) < world * cfg["batch_size"] + world
    else:
        assert set(counts) == set(range(n))  # complete
        assert per_rank[0] == -(-n // world)  # ceil: the last rank is padded, not short
        padding = sum(counts.values()) - n
        assert 0 <= padding < world
        # The padding wraps around the epoch: no record is repeated more than any other
        # by more than one (records repeat more than once only in stores smaller than world).
        assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1


@settings(max_examples=300, deadline=None)
@given(shapes)
def test_every_rank_runs_the_same_batches(cfg: dict) -> None:
    expected = num_batches(
        cfg["n"], world=cfg["world"], batch_size=cfg["batch_size"], drop_last=cfg["drop_last"]
    )
    for rank in range(cfg["world"]):
        plans = _plans(cfg, rank)
        batches = sorted(b for p in plans for b in p.batches)
        assert batches == list(range(expected))
        for plan in plans:
            full = (len(plan.batches) - 1) * cfg["batch_size"]
            assert plan.num_samples == (full + plan.last_batch_size if plan.batches else 0)
            if cfg["drop_last"] and plan.batches:
                assert plan.last_batch_size == cfg["batch_size"]


@settings(max_examples=300, deadline=None)
@given(shapes)
def test_without_shuffle_batches_collected_round_robin_are_in_storage_order(cfg: dict) -> None:
    cfg = dict(cfg, shuffle=False)
    n, size = cfg["n"], cfg["batch_size"]
    streams = []
    for rank in range(cfg["world"]):
        plans = _plans(cfg, rank)
        batches = {}  # rank-local batch index -> its records, as its worker yields them
        for plan in plans:
            indices = list(iter_indices(plan.spans))
            for k, b in enumerate(plan.batches):
                batches[b] = indices[k * size : (k + 1) * size]
        stream = [i for b in sorted(batches) for i in batches[b]]
        # One run of storage order (wrapping around where the last rank is padded).
        assert stream == [(stream[0] + k) % n for k in range(len(stream))] if stream else True
        streams.append(stream)
    if not cfg["drop_last"] and n:
        joined = [i for stream in streams for i in stream]
        assert joined == [k % n for k in range(len(joined))]


@settings(max_examples=100, deadline=None)
@given(shapes)
def test_different_across_epochs(cfg: dict) -> None:
    # Determinism across machines and versions is pinned by the goldens in test_plan.py.
    if cfg["shuffle"] and not cfg["drop_last"] and cfg["n"] >= 4 * cfg["block"]:
        # with 4+ blocks, four epochs drawing one permutation has odds below 1 in 13,000
        # (drop_last can drop all but a few records, or all of them: not counted here)
        epochs = range(cfg["epoch"], cfg["epoch"] + 4)
        orders = {
            tuple(i for r in range(cfg["world"]) for i in _rank_indices(dict(cfg, epoch=e), r))
            for e in epochs
        }
        assert len(orders) > 1


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), max_size=300, unique=True),
    st.integers(1, 64),
    st.integers(0, 99),
)
def test_shuffle_buffer_is_a_bounded_deterministic_permutation(
    items: list[int], capacity: int, seed: int
) -> None:
    buf = ShuffleBuffer(iter(items), capacity, seed)
    out = []
    peak = 0
    for x in buf:
        out.append(x)
        peak = max(peak, len(buf.buffer) + 1)
    assert sorted(out) == sorted(items)
    assert peak <= capacity  # the memory bound, counting the item being emitted
    assert out == list(ShuffleBuffer(iter(items), capacity, seed))


def test_shuffle_buffer_mixes_and_starts_early() -> None:
    items = list(range(10_000))
    out = list(ShuffleBuffer(iter(items), 1000, seed=0))
    displacement = np.abs(np.array(out) - np.arange(len(out)))
    assert out != items and np.median(displacement) > 100
    buf = ShuffleBuffer(iter(items), 1000, seed=0)
    next(buf)
    assert buf.pulled <= 256  # first item out long before the buffer is full


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40), st.integers(0, 300), st.integers(0, 99))
def test_skip_then_continue_equals_uninterrupted(n: int, capacity: int, k: int, seed: int) -> None:
    full = list(ShuffleBuffer(iter(range(n)), capacity, seed))
    resumed = ShuffleBuffer(iter(range(n)), capacity, seed)
    resumed.skip(min(k, n))
    assert list(resumed) == full[min(k, n) :]

"""Properties of the epoch order: the pure functions behind every loader."""

from __future__ import annotations

from collections import Counter
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from seqstore.engine import order
from seqstore.engine.order import BlockOrder
from seqstore.engine.shares import num_batches, worker_plan
from seqstore.engine.shuffle import ShuffleBuffer
from seqstore.engine.spans import iter_indices

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
        # The block order of stores above TABLE_LIMIT blocks, tried on small ones.
        "feistel": st.booleans(),
    }
)


def _sequence(cfg: dict) -> BlockOrder:
    limit = 0 if cfg.get("feistel") else order.TABLE_LIMIT
    with mock.patch.object(order, "TABLE_LIMIT", limit):
        return BlockOrder(
            cfg["n"], cfg["block"], seed=cfg["seed"], epoch=cfg["epoch"], shuffle=cfg["shuffle"]
        )


def _plans(cfg: dict, rank: int) -> list:
    seq = _sequence(cfg)
    args = {k: cfg[k] for k in ("shuffle", "world", "workers", "batch_size", "drop_last")}
    return [worker_plan(seq, **args, rank=rank, worker=w) for w in range(cfg["workers"])]


def _rank_indices(cfg: dict, rank: int) -> list[int]:
    return [i for plan in _plans(cfg, rank) for i in iter_indices(plan.spans)]


@settings(max_examples=300, deadline=None)
@given(shapes, st.data())
def test_blocks_are_contiguous_and_cover_the_store(cfg: dict, data: st.DataObject) -> None:
    n, block = cfg["n"], cfg["block"]
    seq = _sequence(cfg)
    spans = seq.spans(0, n).tolist()
    whole = [i for s in spans for i in range(*s)]
    assert sorted(whole) == list(range(n))
    if not cfg["shuffle"]:
        assert whole == list(range(n))
    else:  # whole blocks, each starting on a block boundary
        assert len(spans) == seq.num_blocks
        assert all(0 < stop - start <= block and start % block == 0 for start, stop in spans)
    # Any stretch is the same stretch of the whole sequence.
    lo = data.draw(st.integers(0, n))
    hi = data.draw(st.integers(lo, n))
    assert [i for s in seq.spans(lo, hi).tolist() for i in range(*s)] == whole[lo:hi]


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


def test_shuffle_buffer_mixes_from_a_full_buffer() -> None:
    items = list(range(10_000))
    out = list(ShuffleBuffer(iter(items), 1000, seed=0))
    displacement = np.abs(np.array(out) - np.arange(len(out)))
    assert out != items and np.median(displacement) > 100
    buf = ShuffleBuffer(iter(items), 1000, seed=0)
    next(buf)
    assert buf.pulled == 1000  # the first item is drawn from a full buffer
    # The first thousand out are a draw from the first thousand in, not from the first few.
    assert np.mean(out[:100]) > 300
    legacy = ShuffleBuffer(iter(items), 1000, seed=0, warmup=256)
    next(legacy)
    assert legacy.pulled == 256  # the old rule: emission from 256 records, half rate


def test_input_that_fits_the_buffer_is_a_uniform_permutation() -> None:
    # Every position equally likely for the first record: its mean place is the middle.
    firsts = [list(ShuffleBuffer(iter(range(50)), 64, seed=s)).index(0) for s in range(400)]
    assert 20 < np.mean(firsts) < 29


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 300), st.integers(1, 40), st.integers(0, 300), st.integers(0, 99))
def test_skip_then_continue_equals_uninterrupted(n: int, capacity: int, k: int, seed: int) -> None:
    full = list(ShuffleBuffer(iter(range(n)), capacity, seed))
    resumed = ShuffleBuffer(iter(range(n)), capacity, seed)
    resumed.skip(min(k, n))
    assert list(resumed) == full[min(k, n) :]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 600), st.integers(0, 2**32 - 1))
def test_feistel_is_a_permutation_with_its_inverse(size: int, seed: int) -> None:
    keys = np.random.SeedSequence(seed).generate_state(6, np.uint64)
    perm = order._Feistel(size, keys)
    values = perm(np.arange(size))
    assert sorted(values.tolist()) == list(range(size))
    assert perm.inverse(values).tolist() == list(range(size))


def test_a_billion_records_order_is_pinned_and_evaluated_pointwise() -> None:
    # 27.8M blocks: beyond the table, so only the positions asked for are computed.
    seq = BlockOrder(10**9, 36, seed=0, epoch=0, shuffle=True)
    assert seq.num_blocks == 27_777_778 > order.TABLE_LIMIT
    assert seq.blocks(0, 4).tolist() == [756774, 19791437, 6875677, 17515687]
    positions = np.random.default_rng(0).integers(0, seq.num_blocks, 100_000)
    assert seq._feistel is not None
    blocks = seq._feistel(positions)
    assert len(set(blocks.tolist())) == len(set(positions.tolist()))  # no two positions collide
    assert seq._feistel.inverse(blocks).tolist() == positions.tolist()
    # The short last block (10**9 = 27,777,777 blocks of 36 + one of 28) is read where the
    # permutation puts it, and the sequence around it has no gap.
    at = seq._short_at * 36
    spans = seq.spans(at - 40, at + 40)
    assert (spans[:, 1] - spans[:, 0]).tolist() == [4, 36, 28, 12]
    assert spans[2].tolist() == [999_999_972, 10**9]


def test_plans_of_a_billion_records_split_every_rank_exactly() -> None:
    seq = BlockOrder(10**9, 36, seed=1, epoch=4, shuffle=True)
    args: dict = dict(shuffle=True, world=1024, workers=16, batch_size=256, drop_last=False)
    for rank in (0, 511, 1023):
        plans = [worker_plan(seq, **args, rank=rank, worker=w) for w in range(16)]
        lengths = [int((p.spans[:, 1] - p.spans[:, 0]).sum()) for p in plans]
        assert lengths == [p.num_samples for p in plans]
        assert sum(lengths) == -(-(10**9) // 1024)
        starts = np.concatenate([p.spans[:, 0] for p in plans])
        assert starts.min() >= 0 and np.concatenate([p.spans[:, 1] for p in plans]).max() <= 10**9
        # Within a rank no record is read twice (the one padded record aside, on the last).
        spans = np.concatenate([p.spans for p in plans])
        spans = spans[np.argsort(spans[:, 0])]
        assert (spans[1:, 0] >= spans[:-1, 1]).all()


@settings(max_examples=300, deadline=None)
@given(shapes, st.lists(st.integers(0, 400), max_size=12, unique=True), st.data())
def test_a_subsequence_keeps_the_order_of_its_records(
    cfg: dict, cuts: list[int], data: st.DataObject
) -> None:
    n = cfg["n"]
    seq = _sequence(cfg)
    edges = sorted(c for c in cuts if c <= n)
    ranges = np.array(edges[: len(edges) // 2 * 2], np.int64).reshape(-1, 2)
    ranges = ranges[ranges[:, 0] < ranges[:, 1]]
    kept = {i for a, b in ranges.tolist() for i in range(a, b)}
    whole = [i for s in seq.spans(0, n).tolist() for i in range(*s) if i in kept]
    sub = order.Subsequence(seq, ranges)
    assert sub.length == len(kept)
    lo = data.draw(st.integers(0, sub.length))
    hi = data.draw(st.integers(lo, sub.length))
    assert [i for s in sub.spans(lo, hi).tolist() for i in range(*s)] == whole[lo:hi]

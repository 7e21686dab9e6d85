"""Elastic resume: an epoch interrupted on one shape (ranks, workers, batch size) and
resumed on another delivers every record it had not, once, then whole epochs follow."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import seqstore
from seqstore import Loader
from seqstore.convert import convert
from seqstore.engine.elastic import remaining_after
from seqstore.engine.plan import EpochSpec, Remaining, WorkerEpoch, rank_order
from seqstore.errors import ResumeError
from seqstore.testing import collect_epoch, make_image_folder

EPOCH = 3


def _spec(world: int, workers: int, batch_size: int, **changes: Any) -> EpochSpec:
    """97 records in blocks of 5, shuffled through a 16-record buffer per worker: a few
    batches in, every buffer still holds records its worker has pulled but not emitted."""
    fields: dict[str, Any] = dict(
        num_records=97,
        block=5,
        capacity=16,
        shuffle=True,
        seed=11,
        rank=0,
        world_size=world,
        workers=max(1, workers),  # 0 workers: the loader's main process is its one worker
        batch_size=batch_size,
        drop_last=False,
    )
    return EpochSpec(**(fields | changes))


def _run(spec: EpochSpec, done: int | None, remaining: Remaining | None = None) -> list[int]:
    """What every rank delivers in its first ``done`` batches (None: all), ranks joined."""
    out: list[int] = []
    for rank in range(spec.world_size):
        order = rank_order(spec, EPOCH, rank, remaining).tolist()
        out += order if done is None else order[: done * spec.batch_size]
    return out


def _check_rest(before: list[int], rest: list[int], remaining: Remaining, spec: EpochSpec) -> None:
    """``rest`` delivers each record of ``remaining`` once, none of ``before``, padded with
    fewer repeats than ranks, and every rank runs the same batches."""
    kept = set(np.flatnonzero(remaining.mask()).tolist())
    counts = Counter(rest)
    assert set(counts) == kept and not kept & set(before)
    per_rank = [len(rank_order(spec, EPOCH, r, remaining)) for r in range(spec.world_size)]
    assert len(set(per_rank)) == 1
    assert sum(counts.values()) - len(kept) < spec.world_size  # the padding
    # It wraps around the rest: no record repeats more than any other by more than one
    # (more than once only where fewer records than ranks remain).
    assert max(counts.values(), default=0) - min(counts.values(), default=0) <= 1


@pytest.mark.parametrize("world1", [1, 2, 3, 4])
@pytest.mark.parametrize("world2", [1, 2, 3, 4])
def test_any_shape_to_any_shape_delivers_each_record_once(world1: int, world2: int) -> None:
    # Scheme 1 -> 2 (a version 4 state, resumed on this seqstore), split batches or not.
    orders = [dict(scheme=1), dict(scheme=2), dict(scheme=2, split=True)]
    for workers1, workers2, order in itertools.product(range(4), range(4), orders):
        first = _spec(world1, workers1, batch_size=4, **order)
        second = _spec(world2, workers2, batch_size=3, split=not order.get("split"))
        # Early (buffers filling), in the middle, and one batch before the end.
        for done in (1, first.num_batches // 2, first.num_batches - 1):
            before = _run(first, done)
            remaining = remaining_after(first, EPOCH, done)
            rest = _run(second, None, remaining)
            _check_rest(before, rest, remaining, second)
            # Together: every record, the interrupted run's own padding aside.
            assert set(before) | set(rest) == set(range(97))
            assert len(before) - len(set(before)) < world1


def test_the_interruption_falls_inside_the_shuffle_buffers() -> None:
    # What the test above relies on: when it stops, every worker holds records it has
    # pulled but not emitted, and those remain to be delivered.
    spec = _spec(2, 2, batch_size=4)
    remaining = set(np.flatnonzero(remaining_after(spec, EPOCH, 2).mask()).tolist())
    for rank in range(2):
        for worker in range(2):
            work = WorkerEpoch(spec, EPOCH, rank, worker)
            buffer = work.shuffle_buffer()
            buffer.skip(work.plan.samples_before(2))
            assert buffer.buffer and set(buffer.buffer) <= remaining


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 4), st.integers(0, 3), st.integers(1, 9), st.floats(0, 1)),
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
    st.booleans(),
)
def test_a_chain_of_resumes_delivers_each_record_once(
    shapes: list[tuple[int, int, int, float]], shuffle: bool, drop_last: bool
) -> None:
    options: dict[str, Any] = dict(shuffle=shuffle, drop_last=drop_last)
    if not shuffle:
        options["capacity"] = 1
    whole = set(_run(_spec(*shapes[0][:3], **options), None))  # what one epoch delivers
    delivered: list[int] = []
    remaining: Remaining | None = None
    for world, workers, batch_size, where in shapes:
        spec = _spec(world, workers, batch_size, **options)
        done = int(where * spec.batches_over(remaining))
        before = _run(spec, done, remaining)
        if remaining is not None:
            assert not set(before) & set(delivered)
        delivered += before
        remaining = remaining_after(spec, EPOCH, done, remaining)
    last = _spec(2, 1, 4, **options)
    rest = _run(last, None, remaining)
    assert remaining is not None and not set(rest) & set(delivered)
    if drop_last:
        # Each resumed run drops the tail that does not fill a batch on every rank.
        assert set(delivered) | set(rest) <= whole
        assert len(delivered) == len(set(delivered)) and len(rest) == len(set(rest))
        assert remaining.count - len(rest) < 2 * 4
    else:
        _check_rest(delivered, rest, remaining, last)
        assert set(delivered) | set(rest) == set(range(97))


def test_without_shuffle_the_rest_is_read_in_storage_order() -> None:
    sorted_spec = dict(shuffle=False, capacity=1)
    first = _spec(2, 2, batch_size=4, **sorted_spec)
    remaining = remaining_after(first, EPOCH, 3)
    # Ranks 0 and 1 delivered records 0..11 and 49..60.
    assert remaining.ranges.tolist() == [[12, 49], [61, 97]]
    rest = rank_order(_spec(1, 3, batch_size=5, **sorted_spec), EPOCH, 0, remaining).tolist()
    assert rest == [*range(12, 49), *range(61, 97)]


def test_the_state_of_imagenet_size_stays_small() -> None:
    # 1.28M records, 8 ranks of 8 workers, 256 MB buffers of 110 KB images, half an epoch.
    spec = EpochSpec(
        num_records=1_281_167,
        block=36,
        capacity=290,
        shuffle=True,
        seed=0,
        rank=0,
        world_size=8,
        workers=8,
        batch_size=32,
        drop_last=False,
    )
    remaining = remaining_after(spec, 0, spec.num_batches // 2)
    state = remaining.to_state()
    assert len(json.dumps(state)) < 1_000_000
    again = Remaining.from_state(json.loads(json.dumps(state)), spec.num_records)
    assert np.array_equal(again.ranges, remaining.ranges)
    # Half of each rank's batches delivered; the buffers' records held back still remain.
    delivered = spec.num_records - remaining.count
    assert delivered == spec.world_size * (spec.num_batches // 2) * spec.batch_size


def test_a_damaged_bitmap_is_refused() -> None:
    remaining = remaining_after(_spec(2, 2, 4), EPOCH, 2)
    state = remaining.to_state()
    with pytest.raises(ValueError, match="holds 81 records, not 80"):
        Remaining.from_state({**state, "count": 80}, 97)
    with pytest.raises(ValueError, match="do not decode"):
        Remaining.from_state({**state, "bitmap": "not base64!"}, 97)


# -- the Loader: real stores, real worker processes ---------------------------------------

N = 90


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("elastic")
    images = make_image_folder(root / "images", classes=3, per_class=N // 3, max_side=48)
    convert(images, root / "store", format="lmdb", progress=False)
    return root / "store"


def _loader(store: Path, **options: Any) -> Loader:
    defaults: dict[str, Any] = dict(
        image_size=16, shuffle_buffer=24, block_mb=0.02, with_indices=True, seed=2
    )
    return Loader(store, **(defaults | options))


def _take(loader: Loader, batches: int) -> list[int]:
    seen: list[int] = []
    for i, (_, _, indices) in enumerate(loader):
        seen += indices.tolist()
        if i + 1 == batches:
            break
    return seen


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 on 2 CPUs
@pytest.mark.parametrize(
    ("first", "second"),
    [
        # (world size, workers, batch size): 1 -> 2 ranks, then 2 -> 1, then 3 -> 2.
        ((1, 2, 8), (2, 3, 5)),
        ((2, 0, 6), (1, 2, 8)),
        ((3, 1, 4), (2, 0, 7)),
    ],
)
def test_loader_resumes_on_another_shape(
    store: Path, first: tuple[int, int, int], second: tuple[int, int, int]
) -> None:
    (world1, workers1, size1), (world2, workers2, size2) = first, second

    def shape(world: int, rank: int, workers: int, size: int) -> dict[str, Any]:
        return dict(world_size=world, rank=rank, num_workers=workers, batch_size=size)

    before: list[int] = []
    states = []
    for rank in range(world1):  # every rank stops after 3 batches, in step
        loader = _loader(store, **shape(world1, rank, workers1, size1))
        before += _take(loader, 3)
        states.append(loader.state_dict())
    # Each rank's state knows what all of them delivered: load the last one everywhere.
    state = json.loads(json.dumps(states[-1]))
    rest: list[int] = []
    lengths = []
    for rank in range(world2):
        loader = _loader(store, **shape(world2, rank, workers2, size2))
        loader.load_state_dict(state)
        assert loader.epoch == 0
        lengths.append(len(loader))
        indices, _, images = collect_epoch(loader)
        assert len(images) == lengths[-1]
        rest += indices
        # Then whole epochs, as a loader of this shape runs them from the start.
        assert loader.epoch == 1 and len(loader) == loader.spec.num_batches
        assert collect_epoch(loader)[0] == rank_order(loader.spec, 1, rank).tolist()
    assert len(set(lengths)) == 1
    counts = Counter(rest)
    assert not set(counts) & set(before)
    assert set(before) | set(counts) == set(range(N))
    assert sum(counts.values()) - len(counts) < world2 and max(counts.values()) <= 2
    assert len(before) == len(set(before)) == world1 * 3 * size1


def test_an_interrupted_resumed_epoch_resumes_again(store: Path) -> None:
    # 1 rank -> 2 ranks, interrupted again, then 1 rank: the rest of the rest.
    first = _loader(store, batch_size=8, num_workers=2)
    delivered = _take(first, 4)
    state = first.state_dict()
    for rank in range(2):
        loader = _loader(store, batch_size=4, num_workers=1, world_size=2, rank=rank)
        loader.load_state_dict(state)
        delivered += _take(loader, 2)
        saved = loader.state_dict()
    assert saved["remaining"] is not None and saved["remaining"]["count"] == N - 32
    # The same shape continues the resumed epoch exactly; here, a third shape takes it on.
    last = _loader(store, batch_size=5, num_workers=0)
    last.load_state_dict(saved)
    rest = collect_epoch(last)[0]
    assert sorted(delivered + rest) == list(range(N))


def test_a_resumed_epoch_interrupted_again_continues_exactly_on_its_shape(store: Path) -> None:
    first = _loader(store, batch_size=8, num_workers=2)
    _take(first, 4)
    state = first.state_dict()
    options = dict(batch_size=4, num_workers=2, world_size=2, rank=1)
    whole = _loader(store, **options)
    whole.load_state_dict(state)
    rest = collect_epoch(whole)[0]  # rank 1's share of the rest, uninterrupted
    interrupted = _loader(store, **options)
    interrupted.load_state_dict(state)
    head = _take(interrupted, 3)
    again = _loader(store, **options)
    again.load_state_dict(interrupted.state_dict())
    assert head + collect_epoch(again)[0] == rest and head == rest[:12]


def test_same_shape_on_another_rank_continues_that_rank(store: Path) -> None:
    # Rank 0's state, loaded on rank 1 of the same shape: rank 1's own rest, exactly.
    options = dict(batch_size=6, num_workers=2, world_size=2)
    whole = rank_order(_loader(store, rank=1, **options).spec, 0, 1).tolist()
    rank0 = _loader(store, rank=0, **options)
    _take(rank0, 2)
    rank1 = _loader(store, rank=1, **options)
    rank1.load_state_dict(rank0.state_dict())
    assert collect_epoch(rank1)[0] == whole[12:]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(seed=3), "the saved loader state has seed=2, this loader seed=3; resume with"),
        (dict(shuffle=False), "has shuffle=True, this loader shuffle=False; resume with"),
    ],
)
def test_another_seed_or_shuffle_setting_is_refused(
    store: Path, change: dict[str, Any], message: str
) -> None:
    first = _loader(store, batch_size=8)
    _take(first, 1)
    with pytest.raises(ResumeError, match=message) as info:
        _loader(store, batch_size=8, **change).load_state_dict(first.state_dict())
    assert "\n" not in str(info.value)


def test_a_damaged_state_is_one_line(store: Path) -> None:
    first = _loader(store, batch_size=8)
    _take(first, 1)
    state = first.state_dict()
    for broken in ({**state, "workers": 0}, {k: v for k, v in state.items() if k != "epoch"}):
        with pytest.raises(ResumeError, match="is damaged") as info:
            _loader(store, batch_size=8).load_state_dict(broken)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("version", [3, 4])
def test_a_state_of_an_older_order_still_resumes(store: Path, version: int) -> None:
    # A state saved by seqstore up to version 4 is of the scheme 1 order: its head is what
    # that order delivered, and the rest is every other record, once.
    first = _loader(store, batch_size=8, num_workers=2)
    old_spec = dataclasses.replace(first.spec, scheme=1)
    head = rank_order(old_spec, 0, 0)[:16].tolist()
    _take(first, 2)
    old = {**first.state_dict(), "version": version}
    del old["scheme"]
    if version == 3:
        del old["remaining"]
    for shape in (dict(batch_size=8, num_workers=2), dict(batch_size=5, num_workers=1)):
        resumed = _loader(store, **shape)
        resumed.load_state_dict(old)
        rest = collect_epoch(resumed)[0]
        assert sorted(head + rest) == list(range(N)), shape
    # Unshuffled orders are the same in both schemes: the epoch continues exactly.
    plain = _loader(store, batch_size=8, num_workers=2, shuffle=False)
    whole = collect_epoch(_loader(store, batch_size=8, num_workers=2, shuffle=False))[0]
    head = _take(plain, 2)
    old = {**plain.state_dict(), "version": 4}
    del old["scheme"]
    resumed = _loader(store, batch_size=8, num_workers=2, shuffle=False)
    resumed.load_state_dict(old)
    assert head + collect_epoch(resumed)[0] == whole


def test_reader_records_match_after_an_elastic_resume(store: Path) -> None:
    # The images of the rest are those of their records: nothing shifted in the reads.
    first = _loader(store, batch_size=8, num_workers=2, transform="imagenet_val", dtype="uint8")
    _take(first, 3)
    resumed = _loader(store, batch_size=7, num_workers=1, transform="imagenet_val", dtype="uint8")
    resumed.load_state_dict(first.state_dict())
    indices, labels, _ = collect_epoch(resumed)
    assert labels == seqstore.open(store).labels()[indices].tolist()


def test_a_loader_whose_workers_run_takes_a_state_of_another_shape(store: Path) -> None:
    first = _loader(store, batch_size=8, num_workers=2)
    head = _take(first, 3)
    loader = _loader(store, batch_size=6, num_workers=2)
    _take(loader, 2)  # its workers are started, with a whole epoch's plan
    loader.load_state_dict(first.state_dict())
    assert sorted(head + collect_epoch(loader)[0]) == list(range(N))


RANK_SCRIPT = """
import json, sys
from seqstore import Loader

store, out, world, rank, workers, size, stop = sys.argv[1:8]
loader = Loader(store, world_size=int(world), rank=int(rank), num_workers=int(workers),
                batch_size=int(size), image_size=16, shuffle_buffer=24, block_mb=0.02,
                with_indices=True, seed=2)
if len(sys.argv) > 8:
    with open(sys.argv[8]) as f:
        loader.load_state_dict(json.load(f))
seen, batches = [], 0
for _, _, indices in loader:
    seen += indices.tolist()
    batches += 1
    if batches == int(stop):
        break
with open(out, "w") as f:
    json.dump({"seen": seen, "batches": batches, "state": loader.state_dict()}, f)
"""


def test_ranks_in_processes_of_their_own_resume_on_another_count(
    store: Path, tmp_path: Path
) -> None:
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)

    def ranks(world: int, workers: int, size: int, stop: int, *state: Path) -> list[dict]:
        outs = [tmp_path / f"w{world}r{rank}.json" for rank in range(world)]
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(store), str(out), str(world), str(rank)]
                + [str(workers), str(size), str(stop), *map(str, state)],
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(Path(seqstore.__file__).parents[1])},
            )
            for rank, out in enumerate(outs)
        ]
        for proc in procs:
            assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
        return [json.loads(out.read_text()) for out in outs]

    first = ranks(2, 2, 6, 3)  # 2 ranks of 2 workers stop after 3 batches of 6
    state = tmp_path / "state.json"
    state.write_text(json.dumps(first[0]["state"]))
    second = ranks(3, 1, 4, 0, state)  # 3 ranks of 1 worker run the rest of the epoch
    before = [i for r in first for i in r["seen"]]
    rest = [i for r in second for i in r["seen"]]
    assert len({r["batches"] for r in second}) == 1  # in step
    assert not set(rest) & set(before) and set(rest) | set(before) == set(range(N))
    assert len(rest) - len(set(rest)) < 3 and len(before) == len(set(before)) == 36
    assert all(r["state"]["epoch"] == 1 for r in second)


@pytest.mark.parametrize("world1", [1, 2, 3])
@pytest.mark.parametrize("world2", [1, 2, 3])
def test_unpadded_evaluation_resumed_on_any_shape_gives_every_record_once(
    world1: int, world2: int
) -> None:
    """``pad=False`` before and after: what the interrupted run delivered and what the
    resumed one delivers are together every record exactly once."""
    for workers1, workers2 in itertools.product(range(3), range(3)):
        first = _spec(world1, workers1, batch_size=4, pad=False)
        second = _spec(world2, workers2, batch_size=3, pad=False)
        for done in (1, first.num_batches // 2, first.num_batches - 1):
            before = _run(first, done)
            rest = _run(second, None, remaining_after(first, EPOCH, done))
            assert sorted(before + rest) == list(range(97)), (workers1, workers2, done)

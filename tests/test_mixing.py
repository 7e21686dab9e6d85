"""Several sources in one Loader: exact per-epoch counts, the pure order, labels in one class
list, resume, ranks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from seqstore import Loader
from seqstore.convert import convert
from seqstore.engine.elastic import remaining_after
from seqstore.engine.mix import MixSequence, source_counts
from seqstore.engine.plan import EpochSpec, mix_sequence, rank_order
from seqstore.errors import ConfigError, ResumeError
from seqstore.testing import make_image_folder


def test_counts_share_the_epoch_by_weight_with_largest_remainders() -> None:
    assert source_counts([100, 30], weights=[1, 1], fixed=[None, None]) == [65, 65]
    assert source_counts([100, 30], weights=[2, 1], fixed=[None, None], epoch_size=100) == [
        67,
        33,
    ]
    # Absolute counts first; the weighted sources share the rest (largest remainder, ties to
    # the earlier source): 137 - 60 = 77 -> 38.5 each -> 39, 38.
    assert source_counts([100, 30, 7], weights=[1, None, 1], fixed=[None, 60, None]) == [39, 60, 38]
    with pytest.raises(ValueError, match="do not fit epoch_size"):
        source_counts([10, 10], weights=[None, 1], fixed=[30, None], epoch_size=20)


def _mix_spec(**changes: object) -> EpochSpec:
    sizes, counts = (100, 30), (65, 65)
    fields: dict[str, object] = dict(
        num_records=130,
        block=8,
        capacity=10,
        shuffle=True,
        seed=3,
        rank=0,
        world_size=2,
        workers=2,
        batch_size=16,
        drop_last=False,
        mix=(sizes, counts),
    )
    return EpochSpec(**(fields | changes))  # type: ignore[arg-type]


def _records(spec: EpochSpec, epoch: int, rank: int) -> np.ndarray:
    """The sources' records rank ``rank`` reads in ``epoch``: the engine orders the epoch's
    positions as one store's records, and the mix maps each to a source's record."""
    return mix_sequence(spec, epoch).storage(rank_order(spec, epoch, rank))


def test_the_pure_order_of_a_mix_golden_exact_and_per_epoch() -> None:
    spec = _mix_spec()
    # Golden: a change to the mix's order changes every mixed loader's epochs.
    assert _records(spec, 0, 0)[:12].tolist() == GOLDEN
    for epoch in (0, 1, 2):
        positions = np.concatenate([rank_order(spec, epoch, r) for r in range(2)])
        assert sorted(positions.tolist()) == list(range(130))  # one store of 130 records
        both = np.concatenate([_records(spec, epoch, r) for r in range(2)])
        source = Counter((both >= 100).tolist())
        assert source == {False: 65, True: 65}  # exactly the counts, every epoch
        assert len(set(both[both >= 100].tolist())) == 30  # the small source, repeated
    a, b = _records(spec, 0, 0), _records(spec, 1, 0)
    assert a.tolist() == _records(spec, 0, 0).tolist() and a.tolist() != b.tolist()
    # The large source gives another subset each epoch.
    first = {i for i in np.concatenate([_records(spec, 0, r) for r in range(2)]) if i < 100}
    second = {i for i in np.concatenate([_records(spec, 1, r) for r in range(2)]) if i < 100}
    assert first != second


def test_a_mixed_epoch_resumed_on_any_shape_gives_the_rest_once() -> None:
    """Elastic: the positions not delivered before the interruption, each once, on another
    world size, worker count and batch size; so the sources' records come as many times as
    the uninterrupted epoch would give them."""
    first = _mix_spec()
    whole = Counter(np.concatenate([_records(first, 0, r) for r in range(2)]).tolist())
    for world, workers, batch in ((1, 3, 5), (3, 1, 7), (2, 2, 16)):
        second = _mix_spec(world_size=world, workers=workers, batch_size=batch)
        done = 2
        before = [_records(first, 0, r)[: done * 16] for r in range(2)]
        remaining = remaining_after(first, 0, done)
        rest = [
            mix_sequence(second, 0).storage(rank_order(second, 0, r, remaining))
            for r in range(world)
        ]
        delivered = Counter(np.concatenate(before + rest).tolist())
        # The resumed ranks pad by wrapping around the rest: fewer extra than ranks.
        assert all(delivered[k] >= v for k, v in whole.items())
        assert sum(delivered.values()) - sum(whole.values()) < world


GOLDEN = [60, 62, 36, 65, 37, 64, 10, 61, 67, 92, 63, 8]


def test_pieces_interleave_the_sources_by_their_shares() -> None:
    seq = MixSequence([1000, 200], [600, 300], 10, seed=1, epoch=0, shuffle=True)
    spans = seq.spans(0, seq.length)
    owner = np.concatenate([np.full(b - a, a >= 1000) for a, b in spans])
    # Every tenth of the epoch holds the sources about 2:1.
    for part in np.array_split(owner, 10):
        assert 0.25 < part.mean() < 0.42


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mix")
    a = make_image_folder(root / "a", classes=3, per_class=20, seed=1, max_side=48)
    b = make_image_folder(root / "b", classes=2, per_class=10, seed=2, max_side=48)
    convert(a, root / "a.lmdb", format="lmdb", progress=False)
    convert(b, root / "b.h5", format="hdf5", progress=False)
    return root / "a.lmdb", root / "b.h5"


def _loader(stores: tuple[Path, Path], **options: object) -> Loader:
    defaults: dict[str, object] = dict(
        weights=[1, 1],
        batch_size=8,
        num_workers=2,
        image_size=16,
        with_indices=True,
        seed=4,
        block_mb=0.005,
    )
    return Loader([str(s) for s in stores], **(defaults | options))


def _epoch(loader: Loader, stop: int | None = None) -> tuple[list[int], list[int]]:
    indices: list[int] = []
    labels: list[int] = []
    for k, (_, y, i) in enumerate(loader, 1):
        indices += i.tolist()
        labels += y.tolist()
        if k == stop:
            break
    return indices, labels


def test_two_formats_one_to_one_give_half_each_with_their_labels(stores: tuple[Path, Path]) -> None:
    import seqstore

    loader = _loader(stores)
    assert loader.classes == ["class00", "class01", "class02"]
    a, b = (seqstore.open(s) for s in stores)
    truth = [*a.labels().tolist(), *b.labels().tolist()]  # same class names: as stored
    orders = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        indices, labels = _epoch(loader)
        source, _ = loader.reader.source_of(np.array(indices))
        assert Counter(source.tolist()) == {0: 40, 1: 40} and len(indices) == 80
        assert labels == [truth[i] for i in indices]
        orders.append(indices)
    assert orders[0] != orders[1]
    again = _loader(stores)
    assert _epoch(again)[0] == orders[0]  # the same seed, the same order


def test_a_mixed_epoch_resumes_on_any_shape_and_refuses_other_weights(
    stores: tuple[Path, Path],
) -> None:
    whole, _ = _epoch(_loader(stores))
    first = _loader(stores)
    head, _ = _epoch(first, stop=3)
    state = first.state_dict()
    resumed = _loader(stores)
    resumed.load_state_dict(state)
    assert len(resumed) == 10 - 3
    assert head + _epoch(resumed)[0] == whole
    other_weights = _loader(stores, weights=[2, 1])
    with pytest.raises(ResumeError, match="mixes its sources in other sizes or counts"):
        other_weights.load_state_dict(state)
    # On another batch size and worker count: the rest of the epoch, each record as often
    # as the uninterrupted epoch would give it.
    other_shape = _loader(stores, batch_size=5, num_workers=1)
    other_shape.load_state_dict(state)
    assert Counter(head + _epoch(other_shape)[0]) == Counter(whole)


def test_two_ranks_run_equal_batches_and_give_no_sample_twice_beyond_the_weights(
    stores: tuple[Path, Path],
) -> None:
    ranks = [_loader(stores, rank=r, world_size=2, epoch_size=74) for r in range(2)]
    seen = [_epoch(loader)[0] for loader in ranks]
    assert len(ranks[0]) == len(ranks[1]) == 5 and [len(s) for s in seen] == [37, 37]
    source, _ = ranks[0].reader.source_of(np.array(seen[0] + seen[1]))
    assert Counter(source.tolist()) == {0: 37, 1: 37}
    counts = Counter(seen[0] + seen[1])
    # The large source (60) gives 37 distinct records; the small (20) each once or twice.
    assert all(counts[i] == 1 for i in counts if i < 60)
    assert {counts[i] for i in counts if i >= 60} <= {1, 2}


def test_class_names_are_united_and_an_unnamed_source_needs_an_offset(tmp_path: Path) -> None:
    a = make_image_folder(tmp_path / "a", classes=2, per_class=4, seed=1, min_side=16, max_side=32)
    b = make_image_folder(tmp_path / "b", classes=3, per_class=4, seed=2, min_side=16, max_side=32)
    (b / "class00").rename(b / "zebra")
    loader = Loader([str(a), str(b)], batch_size=4, image_size=16, with_indices=True, shuffle=False)
    # a's names, then b's new ones in b's order (class01, class02, zebra).
    assert loader.classes == ["class00", "class01", "class02", "zebra"]
    b_names = ["class01", "class02", "zebra"]  # b's own order (sorted)
    for _, labels, indices in loader:
        source, record = loader.reader.source_of(indices.numpy())
        for s, r, y in zip(source.tolist(), record.tolist(), labels.tolist(), strict=True):
            own = loader.reader.readers[s].read(r).label
            name = (["class00", "class01"] if s == 0 else b_names)[own]
            assert loader.classes[y] == name


def test_bad_mixes_are_one_line(stores: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="weights has 1 entries for 2 sources"):
        Loader([str(s) for s in stores], weights=[1])
    with pytest.raises(ConfigError, match="do not fit epoch_size"):
        Loader([{"path": str(stores[0]), "choose": 50}, str(stores[1])], epoch_size=40)
    with pytest.raises(ConfigError, match="give one"):
        Loader([{"path": str(stores[0]), "choose": 5, "weight": 1.0}])


def test_a_source_without_class_names_needs_an_offset_beside_named_ones() -> None:
    from seqstore.backends.mixed import union_classes

    with pytest.raises(ConfigError, match="'b.tar' has no class names"):
        union_classes(["a", "b.tar"], [["cat", "dog"], []], [None, None])
    classes, maps = union_classes(["a", "b.tar"], [["cat", "dog"], []], [None, 2])
    assert classes == ["cat", "dog"] and maps[1] == 2


def test_a_bad_record_is_named_with_its_source(stores: tuple[Path, Path], tmp_path: Path) -> None:
    folder = make_image_folder(tmp_path / "f", classes=3, per_class=4, seed=3, min_side=16)
    victim = sorted((folder / "class01").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated: not an image any more
    loader = Loader(
        [str(folder), str(stores[1])], batch_size=4, image_size=16, on_error="skip", seed=2
    )
    with pytest.warns(Warning):
        batches = sum(1 for _ in loader)
    assert batches == len(loader)
    assert loader.bad_records == [f"{folder}/class01/{victim.name}"]

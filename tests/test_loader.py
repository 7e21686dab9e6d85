"""Loader end to end: real stores, real worker processes, real torch."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

import seqstore
from seqstore import Loader
from seqstore import transforms as T
from seqstore.convert import convert
from seqstore.engine.plan import EpochSpec, WorkerEpoch, rank_order
from seqstore.engine.stream import BlockFetcher, RawBatch, iter_batches
from seqstore.errors import ConfigError
from seqstore.testing import collect_epoch, make_image_folder

N = 90  # not a multiple of the batch size: the last batch is short


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("loader")
    images = make_image_folder(root / "images", classes=6, per_class=N // 6, max_side=96)
    convert(images, root / "store", format="lmdb", progress=False)
    return root / "store"


def _loader(store: Path, **options: Any) -> Loader:
    defaults: dict[str, Any] = dict(
        batch_size=8, image_size=32, shuffle_buffer=24, block_mb=0.05, with_indices=True
    )
    return Loader(store, **(defaults | options))


@pytest.mark.parametrize("workers", [0, 2])
def test_every_record_once_with_its_label(store: Path, workers: int) -> None:
    loader = _loader(store, num_workers=workers)
    indices, labels, images = collect_epoch(loader)
    assert sorted(indices) == list(range(N))
    assert labels == seqstore.open(store).labels()[indices].tolist()
    assert len(images) == len(loader) == 12
    assert [x.shape[0] for x in images] == [8] * 11 + [2]
    assert images[0].shape == (8, 3, 32, 32) and images[0].dtype == torch.float32
    assert indices != sorted(indices)  # shuffled


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_same_batches_new_epoch_new_order(store: Path, workers: int) -> None:
    a = _loader(store, num_workers=workers, seed=7)
    b = _loader(store, num_workers=workers, seed=7)
    ia, _, xa = collect_epoch(a)
    ib, _, xb = collect_epoch(b)
    assert ia == ib and all(torch.equal(u, v) for u, v in zip(xa, xb, strict=True))
    assert a.epoch == 1
    second, _, _ = collect_epoch(a)  # iterating again runs the next epoch
    assert second != ia and sorted(second) == sorted(ia)
    b.set_epoch(1)
    assert collect_epoch(b)[0] == second


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 on 2 CPUs
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_storage_order_without_shuffle(store: Path, workers: int) -> None:
    loader = _loader(store, shuffle=False, transform="imagenet_val", num_workers=workers)
    indices, _, _ = collect_epoch(loader)
    assert indices == list(range(N))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop_after", [1, 5, 11])
def test_resume_continues_exactly(store: Path, workers: int, stop_after: int) -> None:
    full_i, _, full_x = collect_epoch(_loader(store, num_workers=workers, seed=3))
    first = _loader(store, num_workers=workers, seed=3)
    it = iter(first)
    for _ in range(stop_after):
        next(it)
    state = first.state_dict()
    del it
    resumed = _loader(store, num_workers=workers, seed=3)
    resumed.load_state_dict(state)
    rest_i, _, rest_x = collect_epoch(resumed)
    assert rest_i == full_i[stop_after * 8 :]
    assert all(torch.equal(u, v) for u, v in zip(rest_x, full_x[stop_after:], strict=True))
    assert resumed.epoch == 1


def test_seed_changes_the_order_and_the_augmentation(store: Path) -> None:
    options = dict(num_workers=2, dtype="uint8")
    ia, _, xa = collect_epoch(_loader(store, seed=1, **options))
    ib, _, xb = collect_epoch(_loader(store, seed=2, **options))
    assert ia != ib and sorted(ia) == sorted(ib)
    a = dict(zip(ia, torch.cat(xa), strict=True))
    b = dict(zip(ib, torch.cat(xb), strict=True))
    differ = sum(not torch.equal(a[i], b[i]) for i in range(N))
    assert differ > N * 0.9  # each record's crop and flip follow the seed


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_yields_the_plans_order(store: Path, rank: int) -> None:
    # The order the engine's plan gives (pinned by the goldens in test_plan.py) is the one
    # every rank's loader yields, epoch after epoch, with its workers taking turns.
    loader = _loader(store, num_workers=2, world_size=2, rank=rank, seed=5, transform="decode")
    for epoch in (0, 1):
        assert collect_epoch(loader)[0] == rank_order(loader.spec, epoch, rank).tolist()


def test_a_state_saved_before_the_epoch_spec_resumes(store: Path) -> None:
    first = _loader(store, num_workers=0, shuffle=False, transform="imagenet_val")
    it = iter(first)
    next(it)
    old = {**first.state_dict(), "version": 2, "shuffle_capacity": 24}
    del old["capacity"]  # version 2 kept the unused buffer size of a sorted loader
    resumed = _loader(store, num_workers=0, shuffle=False, transform="imagenet_val")
    resumed.load_state_dict(old)
    assert collect_epoch(resumed)[0] == list(range(8, N))


def _single_worker_batches(
    read_block: Any, transform: Any, skip_batches: int = 0
) -> Iterator[RawBatch]:
    """Epoch 0 of the only worker of the only rank: blocks of 10, batches of 8, shuffled
    through a 16-record buffer."""
    spec = EpochSpec(
        num_records=N,
        block=10,
        capacity=16,
        shuffle=True,
        seed=0,
        rank=0,
        world_size=1,
        workers=1,
        batch_size=8,
        drop_last=False,
    )
    return iter_batches(
        read_block, WorkerEpoch(spec, 0, 0, 0), transform, skip_batches=skip_batches
    )


def test_resume_does_not_decode_skipped_samples(store: Path) -> None:
    reader = seqstore.open(store)
    decoded: list[int] = []

    def transform(record: Any, rng: np.random.Generator) -> int:
        decoded.append(record.label)
        return 0

    batches = _single_worker_batches(reader.read_block, transform, skip_batches=6)
    assert sum(len(b.samples) for b in batches) == N - 48
    assert len(decoded) == N - 48


def test_memory_stays_within_buffer_plus_two_blocks(store: Path) -> None:
    reader = seqstore.open(store)
    counts = {"read": 0, "emitted": 0, "peak": 0}

    def read_block(start: int, stop: int) -> list[Any]:
        counts["read"] += stop - start
        return reader.read_block(start, stop)

    def transform(record: Any, rng: np.random.Generator) -> int:
        counts["emitted"] += 1
        counts["peak"] = max(counts["peak"], counts["read"] - counts["emitted"] + 1)
        return 0

    for _ in _single_worker_batches(read_block, transform):
        pass
    # The shuffle buffer, the block being consumed and the one read ahead.
    assert counts["emitted"] == N and counts["peak"] <= 16 + 2 * 10


def test_next_block_is_read_while_the_current_one_is_transformed(store: Path) -> None:
    reader = seqstore.open(store)
    second_block_read = threading.Event()

    def read_block(start: int, stop: int) -> list[Any]:
        if start == 10:
            second_block_read.set()
        return reader.read_block(start, stop)

    fetcher = BlockFetcher(read_block, [(0, 30)], block=10)
    try:
        assert fetcher.get(0).key == reader.read_block(0, 1)[0].key
        # Nothing more is asked of the fetcher: only a read ahead can get block 2 going.
        assert second_block_read.wait(timeout=10)
        assert [fetcher.get(i).key for i in range(1, 30)] == [
            r.key for r in reader.read_block(1, 30)
        ]
    finally:
        fetcher.close()


@pytest.mark.parametrize("drop_last", [False, True])
def test_len_is_exact(store: Path, drop_last: bool) -> None:
    loader = _loader(store, batch_size=16, drop_last=drop_last, transform="imagenet_val")
    batches = list(loader)
    assert len(batches) == len(loader) == (5 if drop_last else 6)
    assert batches[-1][0].shape[0] == (16 if drop_last else 10)


@pytest.mark.parametrize("workers", [0, 2])
def test_len_after_a_resume_is_the_batches_the_next_pass_yields(store: Path, workers: int) -> None:
    """Progress bars and LR schedules read len(loader): after a resume on the same shape it
    is the rest of the epoch, and the epoch after it is whole again."""
    loader = _loader(store, batch_size=8, num_workers=workers, seed=3)
    whole = len(loader)
    it = iter(loader)
    for _ in range(4):
        next(it)
    state = loader.state_dict()
    del it
    resumed = _loader(store, batch_size=8, num_workers=workers, seed=3)
    resumed.load_state_dict(state)
    assert len(resumed) == whole - 4
    assert len(list(resumed)) == whole - 4
    assert len(resumed) == whole  # the next epoch


def test_normalisation_and_layout(store: Path) -> None:
    raw = next(iter(_loader(store, dtype="uint8", shuffle=False, transform="imagenet_val")))[0]
    assert raw.dtype == torch.uint8
    norm = next(iter(_loader(store, shuffle=False, transform="imagenet_val", channels_last=True)))[
        0
    ]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(norm, (raw.float() / 255 - mean) / std, rtol=1e-5, atol=1e-5)
    assert norm.is_contiguous(memory_format=torch.channels_last)
    assert raw.is_contiguous()


def to_small_tensor(image: Any) -> torch.Tensor:
    """A torchvision-style transform on a PIL image (module level: workers pickle it)."""
    return torch.from_numpy(np.array(image.resize((16, 16)))).permute(2, 0, 1).float()


def test_user_transform_on_pil_images(store: Path) -> None:
    pytest.importorskip("PIL")
    loader = _loader(store, transform=to_small_tensor, image_format="pil", num_workers=2)
    x, y, _ = next(iter(loader))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"device": "cuda:0"} if not torch.cuda.is_available() else {"device": "tpu"}, "device"),
        ({"transform": "random_crop"}, "unknown transform"),
        ({"rank": 2, "world_size": 2}, "rank 2 must be below world_size 2"),
        ({"dtype": "float64"}, "dtype"),
    ],
)
def test_invalid_options_fail_before_any_worker(
    store: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Loader(store, **options)


def test_device_auto_is_cuda_where_there_is_one_else_cpu(store: Path) -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    loader = _loader(store, device="auto", num_workers=0)
    assert loader.config.device == expected and loader.device.type == expected
    x, y, _ = next(iter(loader))
    assert x.device.type == expected and y.device.type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_a_one_line_error(store: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Loader(store, device="cuda")
    message = str(err.value)
    assert "\n" not in message
    assert "no CUDA GPU" in message and "device='auto'" in message


def test_config_from_yaml_file(store: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "loader.yaml"
    cfg.write_text(f"path: {store}\nbatch_size: 30\nshuffle: false\ntransform: imagenet_val\n")
    loader = Loader(config=cfg, image_size=16)
    assert len(loader) == 3 and loader.config.image_size == 16


@pytest.mark.parametrize("fmt", ["hdf5", "folder"])
def test_same_records_from_every_backend(store: Path, tmp_path: Path, fmt: str) -> None:
    convert(store, tmp_path / fmt, format=fmt, progress=False)
    reader = seqstore.open(tmp_path / fmt)
    indices, labels, _ = collect_epoch(_loader(tmp_path / fmt, transform="imagenet_val"))
    assert sorted(indices) == list(range(N))
    assert labels == reader.labels()[indices].tolist()


def test_split_helper_reads_tiny_imagenet_layout(tmp_path: Path) -> None:
    root = tmp_path / "tiny"
    for wnid in ("n01", "n02"):
        make_image_folder(root / "train" / wnid / "images", classes=1, per_class=4)
    make_image_folder(root / "val" / "flat", classes=1, per_class=4)
    (root / "val" / "images").mkdir()
    lines = []
    for i, f in enumerate(sorted((root / "val" / "flat" / "class00").iterdir())):
        f.rename(root / "val" / "images" / f.name)
        lines.append(f"{f.name}\t{('n01', 'n02')[i % 2]}\t0\t0\t1\t1")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    train = Loader(root, split="train", batch_size=4, image_size=16)
    # The val split is read in storage order and not augmented unless asked to be.
    val = Loader(root, split="val", batch_size=4, image_size=16, with_indices=True, dtype="uint8")
    assert train.classes == val.classes == ["n01", "n02"]
    indices, labels, images = collect_epoch(val)
    assert indices == [0, 1, 2, 3] and labels == [0, 1, 0, 1]
    for i in indices:
        expected = T.imagenet_val(16)(val.reader.read(i).data, None)
        np.testing.assert_array_equal(images[0][i].permute(1, 2, 0).numpy(), expected)
    assert Loader(root, split="val", shuffle=True, batch_size=4).config.shuffle


def test_breaking_off_then_iterating_again_restarts_thecollect_epoch(store: Path) -> None:
    fresh, _, _ = collect_epoch(_loader(store, num_workers=2, seed=4))
    loader = _loader(store, num_workers=2, seed=4)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    assert loader.epoch == 0
    again, _, _ = collect_epoch(loader)  # the same persistent workers, told to start over
    assert again == fresh and loader.epoch == 1


@pytest.mark.parametrize("channels_last", [True, False])
def test_batches_kept_by_the_loop_are_never_overwritten(store: Path, channels_last: bool) -> None:
    # Workers reuse a few shared-memory buffers; every batch the loop holds must be its own.
    # Augmentation depends on (seed, epoch, index) only, so per record the images from 2
    # workers equal those made in-process.
    options = dict(dtype="uint8", channels_last=channels_last, seed=9, prefetch_factor=1)
    kept = collect_epoch(_loader(store, num_workers=2, **options))
    assert len(kept[2]) > 2 * (1 + 2)  # more batches than ring buffers per worker
    alone = collect_epoch(_loader(store, num_workers=0, **options))

    def by_index(run: tuple[list[int], list[int], list[torch.Tensor]]) -> dict[int, torch.Tensor]:
        images = torch.cat(run[2])
        assert images.is_contiguous(memory_format=torch.channels_last) == channels_last
        return dict(zip(run[0], images, strict=True))

    ring, reference = by_index(kept), by_index(alone)
    assert ring.keys() == reference.keys()
    for i, image in ring.items():
        assert torch.equal(image, reference[i]), i


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_on_cpu_the_loop_gets_the_ring_buffer_itself_and_gives_it_back(
    store: Path, dtype: str
) -> None:
    loader = _loader(store, num_workers=2, dtype=dtype, channels_last=True, prefetch_factor=1)
    ring = loader._ring
    assert ring is not None
    lo = ring.buffers.data_ptr()
    hi = lo + ring.buffers.numel() * ring.buffers.element_size()
    for _epoch in range(2):
        # A loop that drops each batch as the next comes: no copy, and no batch short of a
        # ring buffer (a buffer not given back would send batches outside the ring).
        inside = [lo <= x.data_ptr() < hi for x, _, _ in loader]
        assert inside == [True] * len(loader)
    assert not ring.busy.any()  # all given back once the loop has dropped the last batch


def test_a_batch_kept_from_the_last_epoch_is_not_overwritten(store: Path) -> None:
    loader = _loader(store, num_workers=2, dtype="uint8", channels_last=True, prefetch_factor=1)
    batches = iter(loader)
    kept = next(batches)[0]
    for rest in batches:  # the rest of the epoch: only the first batch is kept
        del rest
    copy = kept.clone()
    collect_epoch(loader)  # the workers start over and fill their buffers again
    assert torch.equal(kept, copy)
    del kept, batches
    assert loader._ring is not None and not loader._ring.busy.any()


def _by_index(run: tuple[list[int], list[int], list[torch.Tensor]]) -> dict[int, torch.Tensor]:
    return dict(zip(run[0], torch.cat(run[2]), strict=True))


@pytest.mark.parametrize(("channels_last", "workers"), [(True, 2), (False, 2), (False, 0)])
def test_float32_on_cpu_is_normalised_in_the_workers(
    store: Path, channels_last: bool, workers: int
) -> None:
    options = dict(seed=5, prefetch_factor=1, channels_last=channels_last, num_workers=workers)
    loader = _loader(store, dtype="float32", **options)
    if workers:
        # In the layout asked for: NCHW planes, or channels-last NHWC.
        assert loader._ring is not None and loader._ring.dtype == torch.float32
        assert loader._ring.shape == ((3, 32, 32) if not channels_last else (32, 32, 3))
    kept = collect_epoch(loader)
    assert len(kept[2]) > 2 * (1 + 2)  # more batches than ring buffers per worker
    layout = torch.channels_last if channels_last else torch.contiguous_format
    assert all(b.is_contiguous(memory_format=layout) for b in kept[2])
    raw = _by_index(collect_epoch(_loader(store, dtype="uint8", **options)))
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    for i, image in _by_index(kept).items():
        torch.testing.assert_close(image, (raw[i].float() / 255 - mean) / std)


def cv2_crop_flip(image: np.ndarray) -> np.ndarray:
    """A user transform doing cv2 work, drawing from Python's and torch's generators
    (module level: workers pickle it)."""
    x = random.randrange(8)
    out = cv2.resize(image[x:, x:], (16, 16))
    return np.ascontiguousarray(out[:, ::-1]) if torch.rand(1).item() < 0.5 else out


def to_chw_float(image: np.ndarray) -> torch.Tensor:
    """A user transform returning a float CHW tensor, as torchvision's ToTensor does."""
    return torch.from_numpy(cv2.resize(image, (12, 12))).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("fn", [cv2_crop_flip, to_chw_float])
def test_user_transform_batches_go_through_the_ring_and_stay_the_loops(
    store: Path, fn: Any
) -> None:
    options = dict(transform=fn, seed=3, prefetch_factor=1)
    loader = _loader(store, num_workers=2, **options)
    assert loader._ring is not None
    kept = collect_epoch(loader)
    assert len(kept[2]) > 2 * (1 + 2)
    ring = _by_index(kept)
    # The same augmentation per record as in-process (no ring), and no batch overwritten.
    alone = _by_index(collect_epoch(_loader(store, num_workers=0, **options)))
    assert ring.keys() == alone.keys()
    for i, image in ring.items():
        assert torch.equal(image, alone[i]), i
    # Looking at the first record's output did not move the caller's generators.
    state = (random.getstate(), torch.get_rng_state())
    Loader(store, transform=fn, num_workers=2)
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[1])


def test_breaking_off_many_times_does_not_leak_buffers(store: Path) -> None:
    loader = _loader(store, num_workers=2, dtype="uint8", prefetch_factor=1)
    for _ in range(6):  # each break leaves batches in flight, more than there are buffers
        for i, _ in enumerate(loader):
            if i == 1:
                break
    indices, _, _ = collect_epoch(loader)
    assert sorted(indices) == list(range(N))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_cuda_batches_equal_cpu_batches(store: Path, dtype: str) -> None:
    # Pinned staging copy out of the shared ring, non_blocking transfer, normalisation on
    # the GPU: the same values as the CPU path, per record.
    options = dict(dtype=dtype, channels_last=True, seed=3, num_workers=2)
    on_gpu = collect_epoch(_loader(store, device="cuda", **options))
    on_cpu = collect_epoch(_loader(store, **options))
    assert all(x.device.type == "cuda" for x in on_gpu[2])
    assert on_gpu[0] == on_cpu[0] and on_gpu[1] == on_cpu[1]
    for gpu, cpu in zip(on_gpu[2], on_cpu[2], strict=True):
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)


def test_decode_only_gives_images_of_their_own_sizes(store: Path) -> None:
    loader = _loader(store, transform="decode", num_workers=2, shuffle=False)
    images, labels, indices = next(iter(loader))
    reader = seqstore.open(store)
    assert isinstance(images, list) and len(images) == len(labels) == 8
    for x, i in zip(images, indices.tolist(), strict=True):
        record = reader.read(i)
        assert x.dtype == torch.uint8 and x.shape == (3, record.height, record.width)


def test_a_pipeline_that_normalises_in_the_workers(store: Path) -> None:
    pipeline = T.Pipeline([T.Resize((24, 20)), T.Normalize()])
    options = dict(transform=pipeline, channels_last=True, shuffle=False)
    indices, _, batches = collect_epoch(_loader(store, num_workers=2, **options))
    in_process = collect_epoch(_loader(store, num_workers=0, **options))
    x = batches[0]
    assert x.shape == (8, 3, 24, 20) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    # Float batches from the workers, each kept by the loop, are the in-process ones.
    assert indices == in_process[0]
    for a, b in zip(batches, in_process[2], strict=True):
        torch.testing.assert_close(a, b)
    reader = seqstore.open(store)
    np.testing.assert_allclose(
        batches[0][3].permute(1, 2, 0).numpy(), pipeline(reader.read(3).data, None), rtol=1e-6
    )


def test_set_epoch_after_breaking_off_saves_a_fresh_position(store: Path) -> None:
    loader = _loader(store, num_workers=0)
    for i, _ in enumerate(loader):
        if i == 2:
            break
    loader.set_epoch(4)
    assert loader.state_dict()["epoch"] == 4 and loader.state_dict()["batches_done"] == 0


def test_negative_seed_is_refused_up_front(store: Path) -> None:
    with pytest.raises(ConfigError, match="seed"):
        _loader(store, seed=-1)

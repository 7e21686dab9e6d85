"""The Loader against damaged stores: checksums on read, the bad-sample policy, the store
in a saved state, a worker killed mid-epoch. Real LMDB and HDF5 stores, real workers."""

from __future__ import annotations

import os
import signal
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch

from seqstore import Loader, get_backend
from seqstore.errors import BadRecordError, BadRecordWarning, ResumeError, WorkerDiedError
from seqstore.records import Record
from seqstore.testing import make_records

N = 96
CLASSES = ["a", "b", "c", "d"]
FLIPPED = (21, 70)  # records whose bytes are damaged on disk after writing
NOT_IMAGE = 45  # a record whose bytes are no image, under a correct checksum
DATA_FILE = {"lmdb": "data.mdb", "hdf5": "data.h5"}


def _records(seed: int = 0) -> list[Record]:
    records = make_records(N, classes=len(CLASSES), seed=seed, max_side=40)
    junk = records[NOT_IMAGE]
    records[NOT_IMAGE] = Record.make(junk.key, junk.label, b"not an image " * 40, 32, 32)
    return records


def _write(path: Path, backend: str, records: list[Record]) -> Path:
    with get_backend(backend).open_writer(path, classes=CLASSES) as writer:
        for record in records:
            writer.write(record)
    return path


def _flip(store: Path, backend: str, record: Record) -> None:
    """Flip one byte in the middle of ``record``'s image bytes in the store's data file."""
    data_file = store / DATA_FILE[backend]
    raw = bytearray(data_file.read_bytes())
    at = raw.find(record.data)
    if at < 0 or raw.find(record.data, at + 1) >= 0:
        raise RuntimeError(f"record '{record.key}' is not once in '{data_file}'")
    raw[at + len(record.data) // 2] ^= 0x55
    data_file.write_bytes(bytes(raw))


@pytest.fixture(scope="module", params=["lmdb", "hdf5"])
def damaged(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with two flipped bytes and one record that is not an image."""
    backend = request.param
    records = _records()
    store = _write(tmp_path_factory.mktemp(backend) / "store", backend, records)
    for i in FLIPPED:
        _flip(store, backend, records[i])
    return store


@pytest.fixture(scope="module")
def damaged_lmdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    records = _records()
    store = _write(tmp_path_factory.mktemp("lmdb") / "store", "lmdb", records)
    for i in FLIPPED:
        _flip(store, "lmdb", records[i])
    return store


BAD_KEYS = {_records()[i].key for i in (*FLIPPED, NOT_IMAGE)}


def _loader(store: Path, **options: Any) -> Loader:
    defaults: dict[str, Any] = dict(
        batch_size=8,
        image_size=16,
        shuffle_buffer=24,
        block_mb=0.02,
        num_workers=2,
        with_indices=True,
        on_error="skip",
    )
    return Loader(store, **(defaults | options))


def _epoch(batches: Iterator[Any]) -> tuple[list[int], list[torch.Tensor]]:
    indices, images = [], []
    for x, _, idx in batches:
        indices += idx.tolist()
        images.append(x)
    return indices, images


def _quiet_epoch(loader: Loader) -> tuple[list[int], list[torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRecordWarning)
        return _epoch(iter(loader))


def test_flipped_byte_raises_naming_record_and_store(damaged: Path) -> None:
    records = _records()
    loader = _loader(damaged, on_error="raise", shuffle=False, batch_size=4)
    with pytest.raises(BadRecordError) as info:
        _epoch(iter(loader))
    message = str(info.value)
    assert type(info.value) is BadRecordError and "\n" not in message
    key = records[FLIPPED[0]].key  # the first bad record in storage order
    assert f"record '{key}' (#{FLIPPED[0]})" in message
    assert f"store '{damaged}'" in message and "fails its checksum" in message
    assert "Caught" not in message and "Traceback" not in message


def test_undecodable_record_raises_naming_record_and_store(damaged: Path) -> None:
    loader = _loader(damaged, on_error="raise", shuffle=False, verify=False)
    with pytest.raises(BadRecordError, match="cannot be decoded") as info:
        _epoch(iter(loader))
    key = _records()[NOT_IMAGE].key
    assert f"record '{key}' (#{NOT_IMAGE}) of store '{damaged}'" in str(info.value)


def test_skip_gives_every_rank_its_full_batches(damaged: Path) -> None:
    clean = _write(damaged.parent / "clean", "lmdb", make_records(N, classes=4, max_side=40))
    seen: set[int] = set()
    for rank in (0, 1):
        loader = _loader(damaged, rank=rank, world_size=2)
        reference = _loader(clean, rank=rank, world_size=2, on_error="raise")
        indices, images = _quiet_epoch(loader)
        _, clean_images = _epoch(iter(reference))
        assert len(images) == len(loader) == len(reference) == 6
        assert [len(x) for x in images] == [len(x) for x in clean_images]
        seen |= set(indices)
    assert seen == set(range(N)) - {*FLIPPED, NOT_IMAGE}


def test_skip_replaces_a_bad_sample_by_the_next_good_one_of_its_batch(damaged: Path) -> None:
    loader = _loader(damaged, shuffle=False, batch_size=8, transform="none")
    indices, batches = _quiet_epoch(loader)
    # Storage order: #21 -> #22, #70 -> #71 (no decoding: #45 is not looked into).
    expected = list(range(N))
    for i in FLIPPED:
        expected[i] = i + 1
    assert indices == expected
    assert batches[2][5] == batches[2][6]  # the bytes themselves


def test_skip_raises_when_no_sample_of_a_batch_is_good(damaged_lmdb: Path) -> None:
    loader = _loader(damaged_lmdb, shuffle=False, batch_size=1, transform="none")
    with pytest.raises(BadRecordError, match=f"all 1 records of batch {FLIPPED[0]} of store"):
        _quiet_epoch(loader)


def _buggy_transform(image: Any) -> Any:
    raise TypeError("a bug in the user's transform")


def test_an_exception_of_a_user_transform_is_never_skipped(damaged_lmdb: Path) -> None:
    loader = _loader(damaged_lmdb, transform=_buggy_transform, max_bad=None)
    with pytest.raises(TypeError, match="a bug in the user's transform"):
        _quiet_epoch(loader)
    assert loader.bad_records == []


def test_resume_mid_epoch_with_skip_equals_uninterrupted(damaged: Path) -> None:
    whole_indices, whole = _quiet_epoch(_loader(damaged, max_bad=3))
    first = _loader(damaged, max_bad=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadRecordWarning)
        batches = iter(first)
        head = [next(batches) for _ in range(5)]
        state = first.state_dict()
    assert state["bad_in_epoch"] >= 1  # a bad record was met before the break
    resumed = _loader(damaged, max_bad=3)
    resumed.load_state_dict(state)
    tail_indices, tail = _quiet_epoch(resumed)
    assert [i for _, _, b in head for i in b.tolist()] + tail_indices == whole_indices
    assert all(
        torch.equal(a, b) for a, b in zip([x for x, _, _ in head] + tail, whole, strict=True)
    )
    assert resumed.epoch == 1
    # The bad records met before the break still count against max_bad after the resume.
    strict = _loader(damaged, max_bad=2)
    strict.load_state_dict(state)
    with pytest.raises(BadRecordError, match="more than max_bad=2"):
        _quiet_epoch(strict)


@pytest.mark.parametrize(
    ("max_bad", "raises"), [(2, True), (3, False), (0.03, True), (0.04, False)]
)
def test_max_bad_count_and_fraction(damaged_lmdb: Path, max_bad: float, raises: bool) -> None:
    # 3 bad records of 96: a fraction of 0.03 allows 2, one of 0.04 allows 3.
    loader = _loader(damaged_lmdb, max_bad=max_bad, num_workers=0)
    if raises:
        with pytest.raises(BadRecordError, match=f"more than max_bad={max_bad} bad records"):
            _quiet_epoch(loader)
    else:
        assert len(_quiet_epoch(loader)[1]) == len(loader)


def test_bad_records_are_kept_and_warned_once(damaged_lmdb: Path) -> None:
    loader = _loader(damaged_lmdb)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _epoch(iter(loader))
        _epoch(iter(loader))  # a second epoch meets them again
    messages = [str(w.message) for w in caught if w.category is BadRecordWarning]
    assert sorted(loader.bad_records) == sorted(BAD_KEYS)
    assert len(messages) == 3 and all(f"store '{damaged_lmdb}'" in m for m in messages)
    assert {m.split("'")[1] for m in messages} == BAD_KEYS
    assert all("\n" not in m for m in messages)


def test_verify_false_lets_a_flipped_byte_through(damaged_lmdb: Path) -> None:
    loader = _loader(damaged_lmdb, verify=False, on_error="raise", transform="none")
    assert loader.verifies is False
    indices = [i for _, _, idx in loader for i in idx.tolist()]
    assert set(FLIPPED) <= set(indices)
    with pytest.raises(BadRecordError, match="fails its checksum"):
        list(_loader(damaged_lmdb, on_error="raise", transform="none"))


def test_image_folder_is_not_claimed_verified(tmp_path: Path) -> None:
    from seqstore.testing import make_image_folder

    folder = make_image_folder(tmp_path / "images", classes=2, per_class=4)
    assert _loader(folder).verifies is False
    assert _loader(_write(tmp_path / "s", "lmdb", make_records(4))).verifies is True


def test_resume_on_another_store_is_refused(tmp_path: Path) -> None:
    records = make_records(40, classes=4)
    a = _write(tmp_path / "a", "lmdb", records)
    b = _write(tmp_path / "b", "lmdb", records)
    first = _loader(a, num_workers=0)
    next(iter(first))
    state = first.state_dict()
    with pytest.raises(ResumeError, match=f"of store '{a}'.*not of '{b}'"):
        _loader(b, num_workers=0).load_state_dict(state)
    with pytest.raises(ResumeError, match="version 1 is not supported"):
        _loader(a, num_workers=0).load_state_dict(state | {"version": 1})
    _loader(a, num_workers=0).load_state_dict(state)


def test_worker_killed_mid_epoch_is_one_error_and_resumes_exactly(tmp_path: Path) -> None:
    store = _write(tmp_path / "store", "lmdb", make_records(N, classes=4, max_side=40))
    whole_indices, whole = _epoch(iter(_loader(store)))
    loader = _loader(store)
    others = {p.pid for p in psutil.Process().children()}
    batches = iter(loader)
    head = [next(batches) for _ in range(3)]
    state = loader.state_dict()
    workers = [p for p in psutil.Process().children() if p.pid not in others]
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)
    time.sleep(0.5)  # the SIGCHLD arrives here, outside the loader
    started = time.monotonic()
    with pytest.raises(WorkerDiedError) as info:
        for _ in batches:
            pass
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "\n" not in message and f"store '{store}'" in message and "after batch 3" in message
    assert info.value.__cause__ is None and info.value.__context__ is None
    for again in (Loader, None):  # a fresh loader, then the same one
        resumed = _loader(store) if again else loader
        resumed.load_state_dict(state)
        tail_indices, tail = _epoch(iter(resumed))
        assert [i for _, _, b in head for i in b.tolist()] + tail_indices == whole_indices
        assert all(
            torch.equal(a, b) for a, b in zip([x for x, _, _ in head] + tail, whole, strict=True)
        )


_SMALL_SHM = """
import multiprocessing
import os
import sys

import numpy as np
import torch

src, case, start = sys.argv[1:4]
if case == "no-memfd":  # a system without memfds: torch's shared memory, in /dev/shm
    del os.memfd_create

from seqstore import Loader
from seqstore.errors import SeqstoreError
from seqstore.testing import make_image_folder


def crop(image):  # a user callable: its batches come from default_collate
    return {"x": torch.from_numpy(np.ascontiguousarray(image[:160, :160])).float()}


if __name__ == "__main__":
    multiprocessing.set_start_method(start, force=True)
    make_image_folder(src, classes=2, per_class=150, min_side=200, max_side=400)
    try:
        if case in ("float32", "uint8", "no-memfd"):
            dtype = "uint8" if case == "uint8" else "float32"
            loader = Loader(src, batch_size=256, num_workers=2, image_size=224, dtype=dtype)
            print("epoch", sum(len(y) for _, y in loader))
        elif case == "kept":  # every batch kept: the ring runs dry, batches go one by one
            loader = Loader(src, batch_size=32, num_workers=2, image_size=224)
            kept = [x for x, _ in loader]
            print("epoch", sum(len(x) for x in kept), all(float(x.abs().sum()) > 0 for x in kept))
        elif case == "decode":  # images of their own sizes
            loader = Loader(src, batch_size=256, num_workers=2, transform="decode")
            print("epoch", sum(len(x) for x, _ in loader))
        elif case == "callable":
            loader = Loader(src, batch_size=256, num_workers=2, transform=crop)
            print("epoch", sum(len(b["x"]) for b, _ in loader))
    except SeqstoreError as exc:
        print("error:", exc)
"""


def _in_small_shm(tmp_path: Path, *args: str) -> str:
    """The last line ``_SMALL_SHM`` prints with ``args``, run in a private mount namespace
    whose /dev/shm is a 64 MB tmpfs, Docker's default."""
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to mount a small /dev/shm")
    script = tmp_path / "small_shm.py"
    script.write_text(_SMALL_SHM)
    command = (
        "mount -t tmpfs -o size=64m tmpfs /dev/shm && "
        f"{sys.executable} {script} {tmp_path / 'src'} {' '.join(args)}"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.run(
        ["unshare", "-m", "sh", "-c", command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    if "mount" in p.stderr and p.returncode != 0 and "error:" not in p.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("case", "start"),
    [
        ("float32", "fork"),
        ("uint8", "fork"),
        ("float32", "spawn"),
        ("uint8", "forkserver"),
        ("kept", "fork"),
        ("decode", "forkserver"),
        ("callable", "spawn"),
    ],
)
def test_an_epoch_completes_in_dockers_64_mb_dev_shm(tmp_path: Path, case: str, start: str) -> None:
    """Docker's default /dev/shm: an epoch of batches of 256 with 2 workers completes, its
    batches in memory that /dev/shm's size does not bound, with workers started by fork,
    spawn or forkserver; so do batches that miss the ring (a loop that keeps every batch,
    images of their own sizes, a user callable's dicts)."""
    line = _in_small_shm(tmp_path, case, start)
    assert line.split()[:2] == ["epoch", "300"], line
    if case == "kept":
        assert line.endswith("True"), line


def test_shared_memory_that_does_not_fit_is_one_line_naming_dev_shm(tmp_path: Path) -> None:
    """Where there are no memfds, the Loader's shared memory is /dev/shm's; when it does not
    fit, that is one line naming /dev/shm, its size, the need and the fixes, not torch's
    RuntimeError."""
    line = _in_small_shm(tmp_path, "no-memfd", "fork")
    assert line.startswith("error: the Loader's workers need"), line
    assert "/dev/shm holds 67 MB" in line and "--shm-size" in line


_CV2_BEFORE_FORK = """
import sys
import cv2
import numpy as np
from seqstore import Loader
from seqstore.testing import make_image_folder
src = make_image_folder(sys.argv[1], classes=2, per_class=8)
# OpenCV's thread pool is running in this process when the Loader forks its workers.
cv2.resize(np.zeros((3000, 3000, 3), np.uint8), (2000, 2000))
loader = Loader(src, batch_size=4, num_workers=2, image_size=32)
print("epoch", sum(len(y) for _, y in loader))
"""


def test_opencv_used_in_the_main_process_before_workers_fork(tmp_path: Path) -> None:
    """A user's own multi-threaded cv2 call before the Loader forks its workers: the
    workers' first OpenCV call must not wait forever for pool threads they never got."""
    import subprocess
    import sys

    script = tmp_path / "cv2_first.py"
    script.write_text(_CV2_BEFORE_FORK)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    p = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "src")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("the Loader's workers hung after OpenCV ran threads in the main process")
    assert p.returncode == 0, err
    assert out.split() == ["epoch", "16"]

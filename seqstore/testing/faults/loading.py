"""Fault cases of the Loader: a damaged record under each policy (in a store, and in an image
folder read in place), a worker killed mid-epoch, Docker's 64 MB /dev/shm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .harness import (
    convert_cli,
    data_file,
    failure_outcome,
    make_source,
    run_cli,
    run_python,
)

_LOADER_BODY = """
from seqstore import Loader
loader = Loader({store!r}, batch_size=16, num_workers=2, on_error={policy!r}, seed={seed})
batches = sum(1 for _ in loader)
print(batches, len(loader), sorted(loader.bad_records))
"""


def loader_bad_record(policy: str) -> Callable[[Path, np.random.Generator], str]:
    """A Loader epoch over a store with one flipped byte, with ``on_error=policy``."""

    def run(workdir: Path, rng: np.random.Generator) -> str:
        store = workdir / "store"
        convert_cli(make_source(workdir), store, "lmdb")
        from ...backends import open_store

        reader = open_store(store)
        key = reader.read(int(rng.integers(len(reader)))).key
        reader.close()
        _flip_record_byte_of(store, key, rng)
        p = run_python(
            _LOADER_BODY.format(store=str(store), policy=policy, seed=int(rng.integers(99)))
        )
        if p.rc != 0:
            outcome = failure_outcome(p)
            return outcome if key in p.err else "silent wrong"  # the error must name it
        batches, expected, *bad = p.out.strip().split(maxsplit=2)
        if policy == "raise" or batches != expected or bad != [repr([key])]:
            return "silent wrong"
        return "handled"

    return run


def _flip_record_byte_of(store: Path, key: str, rng: np.random.Generator) -> None:
    from ...backends import open_store

    reader = open_store(store)
    data = next(r.data for r in reader.read_block(0, len(reader)) if r.key == key)
    reader.close()
    raw = bytearray(data_file(store).read_bytes())
    raw[raw.find(data) + int(rng.integers(20, len(data)))] ^= 0x10
    data_file(store).write_bytes(bytes(raw))


def loader_worker_killed(workdir: Path, rng: np.random.Generator) -> str:
    """A Loader worker SIGKILLed mid-epoch: one error, then an exact resume."""
    store = workdir / "store"
    convert_cli(make_source(workdir), store, "lmdb")
    after = int(rng.integers(1, 10))
    body = f"""
import gc, os, signal, psutil, torch
from seqstore import Loader
from seqstore.errors import WorkerDiedError
options = dict(batch_size=16, num_workers=2, with_indices=True, seed=3)
first = Loader({str(store)!r}, **options)
full = [i for _, _, idx in first for i in idx.tolist()]
del first
gc.collect()  # its persistent workers end: the only children are the next loader's
loader = Loader({str(store)!r}, **options)
seen, state = [], None
try:
    for n, (_, _, idx) in enumerate(loader):
        seen += idx.tolist()
        state = loader.state_dict()
        if n == {after}:
            os.kill(psutil.Process().children()[0].pid, signal.SIGKILL)
except WorkerDiedError as exc:
    print("died:", exc)
resumed = Loader({str(store)!r}, **options)
resumed.load_state_dict(state)
seen += [i for _, _, idx in resumed for i in idx.tolist()]
print("exact" if seen == full else "differs")
"""
    p = run_python(body)
    if p.rc != 0:
        return failure_outcome(p)
    lines = p.out.splitlines()
    died = [line for line in lines if line.startswith("died:")]
    if lines[-1] != "exact":
        return "silent wrong"
    return "clear error" if len(died) == 1 else "silent wrong"


def folder_bad_files(policy: str) -> Callable[[Path, np.random.Generator], str]:
    """A Loader epoch over an image folder read in place that holds a truncated JPEG and a
    JPEG whose data libjpeg finds damaged (its end marker put back), with ``on_error``."""

    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = make_source(workdir, per_class=8)
        files = sorted(p for p in src.rglob("*.JPEG"))
        picks = rng.choice(len(files), 2, replace=False)
        cut, damaged = files[int(picks[0])], files[int(picks[1])]
        data = cut.read_bytes()
        cut.write_bytes(data[: len(data) // 3])
        data = damaged.read_bytes()
        damaged.write_bytes(data[: len(data) * 2 // 3] + b"\xff\xd9")
        keys = sorted(p.relative_to(src).as_posix() for p in (cut, damaged))
        body = _LOADER_BODY.replace("batch_size=16", "batch_size=16, transform='imagenet_val'")
        p = run_python(body.format(store=str(src), policy=policy, seed=int(rng.integers(99))))
        if p.rc != 0:
            outcome = failure_outcome(p)
            return outcome if any(k in p.err for k in keys) else "silent wrong"
        batches, expected, *bad = p.out.strip().split(maxsplit=2)
        if policy == "raise" or batches != expected or bad != [repr(keys)]:
            return "silent wrong"
        return "handled"

    return run


def dataset_root(workdir: Path, rng: np.random.Generator) -> str:
    """``convert`` of a dataset root (train/ and val/) given without a split: one line
    naming the splits, not a store of two classes."""
    from ..data import make_image_folder

    root = workdir / "data"
    make_image_folder(root / "train", classes=3, per_class=4, seed=int(rng.integers(99)))
    make_image_folder(root / "val", classes=3, per_class=2)
    p = run_cli("convert", root, workdir / "out", "--format", "lmdb", "--quiet")
    if p.rc == 0:
        return "silent wrong"
    outcome = failure_outcome(p)
    return outcome if "splits train, val" in p.err else "silent wrong"


_SMALL_SHM_BODY = """
from seqstore import Loader
loader = Loader({src!r}, batch_size=256, num_workers=2, image_size=224, dtype={dtype!r})
print(sum(len(labels) for _, labels in loader), loader.num_records)
"""


def small_dev_shm(dtype: str) -> Callable[[Path, np.random.Generator], str]:
    """A Loader epoch of batches of 256 (``dtype``) with 2 workers, in a container's 64 MB
    /dev/shm (Docker's default): the whole epoch, not torch's 'No space left on device'."""

    def run(workdir: Path, rng: np.random.Generator) -> str:
        src = make_source(workdir, per_class=int(rng.integers(70, 90)))
        p = run_python(_SMALL_SHM_BODY.format(src=str(src), dtype=dtype), shm_mb=64)
        if p.rc != 0:
            return failure_outcome(p)
        seen, records = p.out.split()
        return "handled" if seen == records else "silent wrong"

    return run
